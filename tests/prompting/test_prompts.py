import json

import pytest

from conftest import upstream_or_skip
from defake_pipeline.errors import PromptError
from defake_pipeline.prompting.decorators import resolve_decorators
from defake_pipeline.prompting.spec import load_prompt, prompt_files


def write(tmp_path, data, name="p.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


GOOD = {
    "format_version": "3",
    "name": "t",
    "conversations": [
        {"id": "c1", "payload": [["user", "What is it?", "{image_url}"]], "response_var_name": "thing"},
        {"id": "c2", "payload": [["system", "s"], ["user", "Is {thing} real?"]], "response_var_name": "result"},
    ],
}


def test_valid_prompt_loads_with_key_and_hash(tmp_path):
    prompt = load_prompt(write(tmp_path, GOOD, "My Prompt.json"))
    assert prompt.key.startswith("my-prompt-")  # the space and case are lost: a hash of the name keeps it apart
    assert len(prompt.content_hash) == 16
    assert [c.id for c in prompt.spec.conversations] == ["c1", "c2"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format_version="2"), 'format_version must be "3"'),
        (lambda d: d["conversations"][1].update(response_var_name="other"), "no conversation sets the 'result'"),
        (lambda d: d["conversations"][0]["payload"].append(["robot", "hi"]), "unknown role 'robot'"),
        (
            lambda d: d["conversations"][1]["payload"].append(["user", "{nobody}"]),
            "variable {nobody} is set by nothing",
        ),
        (
            lambda d: d["conversations"][1]["payload"].append(["user", "{image_url.__class__}"]),
            "only {name} placeholders",
        ),
        (lambda d: d["conversations"][0].pop("payload"), "conversations.0.payload: Field required"),
        (
            lambda d: d["conversations"][0]["payload"].append(["assistant", "x", "{image_url}"]),
            "only user turns may carry an image",
        ),
    ],
)
def test_invalid_prompts_name_file_and_cause_on_one_line(tmp_path, mutate, message):
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(PromptError) as info:
        load_prompt(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text


def test_invalid_json_is_one_line(tmp_path):
    path = write(tmp_path, "{not json")
    with pytest.raises(PromptError, match="invalid JSON"):
        load_prompt(path)


def test_project_prompts_all_load():
    files = prompt_files()
    assert files, "the project ships prompts/"
    for path in files:
        resolve_decorators(load_prompt(path))


@pytest.mark.parametrize("name", ["simple", "p1", "p3", "p5", "p6"])
def test_upstream_prompts_without_decorators_load_unchanged(name):
    prompt = load_prompt(upstream_or_skip("prompts", "paper", f"{name}.json"))
    assert prompt.spec.conversations[-1].response_var_name == "result"


@pytest.mark.parametrize(("name", "decorator"), [("fusion", "fusion.v1"), ("p4", "two_shot.v2")])
def test_upstream_prompts_naming_unshipped_decorators_fail_clearly(name, decorator):
    prompt = load_prompt(upstream_or_skip("prompts", "paper", f"{name}.json"))
    with pytest.raises(PromptError) as info:
        resolve_decorators(prompt)
    assert decorator in str(info.value) and "conversation" in str(info.value)


def test_a_decorator_module_that_fails_to_import_is_one_line_and_shadows_nothing(tmp_path, monkeypatch):
    """The original tool's decorators/ folder in the working directory (its modules
    import mllm_defake) neither raises a traceback nor hides the project's own two_shot.v1."""
    from defake_pipeline.settings import PACKAGE_ROOT

    folder = tmp_path / "decorators"
    folder.mkdir()
    for module in ("two_shot", "fusion"):
        (folder / f"{module}.py").write_text("from mllm_defake.utils import encode_image\n\ndef v1(cache):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    data = json.loads(json.dumps(GOOD))
    data["conversations"][0]["decorators"] = ["two_shot.v1"]
    resolved = resolve_decorators(load_prompt(write(tmp_path, data, "ours.json")))
    assert resolved["two_shot.v1"].__code__.co_filename == str(PACKAGE_ROOT / "decorators" / "two_shot.py")
    data["conversations"][1]["decorators"] = ["fusion.v1"]
    with pytest.raises(PromptError) as info:
        resolve_decorators(load_prompt(write(tmp_path, data, "theirs.json")))
    message = str(info.value)
    assert "\n" not in message and "'fusion.v1' is not shipped" in message
    assert f"{folder / 'fusion.py'} failed to import (ModuleNotFoundError: No module named 'mllm_defake')" in message
