import pytest

from defake_pipeline.prompting.templating import TemplateError, render, template_fields
from defake_pipeline.verdict import parse_verdict


def test_render_substitutes_names_and_keeps_escaped_braces():
    assert render("a {x} {{literal}} {y}", {"x": 1, "y": "two"}) == "a 1 {literal} two"


@pytest.mark.parametrize("template", ["{image_url.__class__}", "{cache[0]}", "{x!r}", "{x:>10}", "{0}"])
def test_render_refuses_anything_but_bare_names(template):
    with pytest.raises(TemplateError, match="only \\{name\\}"):
        render(template, {"image_url": "u", "cache": [1], "x": 1, "0": 0})
    with pytest.raises(TemplateError):
        list(template_fields(template))


def test_render_names_the_unset_variable():
    with pytest.raises(TemplateError, match=r"\{missing\} is not set"):
        render("see {missing}", {})


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("real", "real"),
        ("This image is generated.", "fake"),
        ("It looks real at first, but it is generated", "fake"),
        ("Generated? No. It is real.", "real"),
        ("FAKE", "fake"),
        ("It has a natural look", "real"),
        ("unnatural lighting", "unknown"),  # " natural" needs its leading space, as in the seed
        ("这是真实的", "real"),
        ("这是生成的", "fake"),
        ("I cannot tell.", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
        ("surreal", "real"),  # the seed matches substrings; so do we
    ],
)
def test_parse_verdict_matches_the_seed(text, verdict):
    assert parse_verdict(text) == verdict
