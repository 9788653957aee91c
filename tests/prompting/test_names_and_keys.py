"""Names become partition keys that keep distinct names distinct; what still collides is an error."""

import json
import shutil

import pytest

from conftest import REPO, demo_dataset
from defake_pipeline.endpoints.registry import model_table
from defake_pipeline.errors import ModelConfigError, PromptError
from defake_pipeline.prompting.spec import find_prompt, load_prompt, prompt_by_key, scan_prompts
from defake_pipeline.text import slugify


def test_keys_keep_names_apart():
    names = ["真实", "生成", "My Model", "my-model", "my model", "MY-MODEL", "a.b", "a...b", "a,b", "a|b", "", " "]
    names += ["a_b", "a__b", "a___b", "_a", "a_", "__"]
    keys = [slugify(n) for n in names]
    assert len(set(keys)) == len(names), dict(zip(names, keys, strict=True))
    assert all(k and "|" not in k and "," not in k and "..." not in k and " " not in k for k in keys)
    # File names join keys with "__" (<model>__<prompt>.md): no key holds it, or makes it beside another.
    assert all("__" not in k and not k.startswith("_") and not k.endswith("_") for k in keys)
    # A name that is a key already stays as it is: existing partitions keep their keys.
    assert [slugify(n) for n in ("simple", "gpt4o", "defect_query", "真实", "canny", "a_b")] == [
        "simple",
        "gpt4o",
        "defect_query",
        "真实",
        "canny",
        "a_b",
    ]
    assert slugify("My Model").startswith("my-model-")


def _prompt(text: str) -> dict:
    raw = json.loads((REPO / "prompts" / "simple.json").read_text())
    raw["conversations"][-1]["payload"][-1][1] = text
    return raw


@pytest.fixture
def project(tmp_path, monkeypatch, defake_home):
    root = tmp_path / "proj"
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "真实.json").write_text(json.dumps(_prompt("REAL-PROMPT: real or generated?")))
    (root / "prompts" / "生成.json").write_text(json.dumps(_prompt("GEN-PROMPT: real or generated?")))
    demo_dataset(root)
    monkeypatch.chdir(root)
    return root


def test_non_ascii_prompt_names_are_two_prompts(project):
    real, gen = find_prompt("真实"), find_prompt("生成")
    assert (real.name, gen.name) == ("真实.json", "生成.json")
    assert load_prompt(real).key == "真实" and load_prompt(gen).key == "生成"
    assert prompt_by_key("生成").path.name == "生成.json"
    valid = scan_prompts().valid
    assert "真实" in valid and "生成" in valid and valid["真实"] != valid["生成"]


def test_materialize_a_non_ascii_prompt_runs_that_prompt_under_its_name(project, chat_server, tmp_path):
    from click.testing import CliRunner

    from defake_pipeline.cli import main
    from defake_pipeline.warehouse.layout import HomeLayout

    env = {"DAGSTER_HOME": str(tmp_path / "dh"), "BASE_URL": chat_server.base_url}
    out = CliRunner().invoke(main, ["materialize", "--model", "vllm", "-p", "真实"], env=env)
    assert out.exit_code == 0, out.output
    sent = json.dumps([b["messages"] for b in chat_server.state.bodies], ensure_ascii=False)
    assert chat_server.state.n_chat > 0 and "REAL-PROMPT" in sent and "GEN-PROMPT" not in sent
    layout = HomeLayout()
    assert layout.report_file("vllm", "真实").exists() and not layout.report_file("vllm", "生成").exists()
    assert "`真实`" in layout.leaderboard_file.read_text()


def test_materialize_of_a_prompt_named_by_a_path_evaluates_that_file_or_refuses(project, chat_server, tmp_path):
    """A partition is a prompt key, and every run looks its file up by key. A file elsewhere that
    shares a project prompt's key would have the project's prompt evaluated and published as if it
    were the file named; it is refused. The project's own file, named by its path, runs."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    elsewhere = tmp_path / "elsewhere" / "真实.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(_prompt("ELSEWHERE-PROMPT: real or generated?")))
    env = {"DAGSTER_HOME": str(tmp_path / "dh"), "BASE_URL": chat_server.base_url}
    for command in (["materialize"], ["estimate"]):
        out = CliRunner().invoke(main, [*command, "--model", "vllm", "-p", str(elsewhere)], env=env)
        assert out.exit_code == 2, out.output
        assert "key '真实' is " in out.output and "prompts/真实.json" in out.output
    assert chat_server.state.n_chat == 0
    own = CliRunner().invoke(
        main, ["materialize", "--model", "vllm", "-p", str(project / "prompts" / "真实.json")], env=env
    )
    assert own.exit_code == 0, own.output
    sent = json.dumps([b["messages"] for b in chat_server.state.bodies], ensure_ascii=False)
    assert "REAL-PROMPT" in sent and "ELSEWHERE-PROMPT" not in sent


def test_two_prompt_files_giving_one_key_are_one_error_naming_both(project):
    for sub in ("a", "b"):
        (project / "prompts" / sub).mkdir()
        shutil.copy(REPO / "prompts" / "simple.json", project / "prompts" / sub / "twin.json")
    with pytest.raises(PromptError, match=r"a/twin\.json and .*b/twin\.json give one prompt key 'twin'"):
        find_prompt("twin")
    scan = scan_prompts()
    assert "twin" not in scan.valid and sum("twin.json" in f for f in scan.invalid) == 2
    assert "真实" in scan.valid  # the others still run


def test_model_names_keep_their_own_keys_and_a_clash_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.toml").write_text(
        '[models."My Model"]\npreset = "vllm"\n\n[models.my-model]\npreset = "vllm"\n'
    )
    table = model_table()
    assert table["My Model"].key != table["my-model"].key == "my-model"
    clash = slugify("My Model")
    (tmp_path / "models.toml").write_text(
        f'[models."My Model"]\npreset = "vllm"\n\n[models.{clash}]\npreset = "vllm"\n'
    )
    with pytest.raises(ModelConfigError, match=f"'My Model' and .*'{clash}' give one partition key"):
        model_table()


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_a_deeply_nested_prompt_is_one_line_and_the_scan_goes_on(project, depth):
    deep = project / "prompts" / "deep.json"
    nested = "[" * depth + "]" * depth
    deep.write_text('{"format_version": "3", "conversations": ' + nested + "}")
    with pytest.raises(PromptError, match=r"deep\.json: (JSON nested too deeply to read|conversations)") as caught:
        load_prompt(deep)
    assert "\n" not in str(caught.value)
    scan = scan_prompts()  # what the registry sensor reads every tick
    assert str(deep) in scan.invalid and {"真实", "生成"} <= set(scan.valid)


def test_a_model_and_a_prompt_whose_names_hold_the_separator_get_reports_of_their_own(project, chat_server, tmp_path):
    """A report is <model>__<prompt>.md: model `a__b` on prompt `c` and model `a` on prompt `b__c`
    are two partitions, and neither may be published in the other's file."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main
    from defake_pipeline.warehouse.layout import HomeLayout

    for name in ("c", "b__c", "_c"):
        shutil.copy(REPO / "prompts" / "simple.json", project / "prompts" / f"{name}.json")
    (project / "models.toml").write_text(
        '[models.a]\npreset = "vllm"\n\n[models."a__b"]\npreset = "vllm"\n\n[models.a_]\npreset = "vllm"\n'
    )
    env = {"DAGSTER_HOME": str(tmp_path / "dh"), "BASE_URL": chat_server.base_url}
    pairs = [("a", "b__c"), ("a__b", "c"), ("a_", "c"), ("a", "_c")]
    for model, prompt in pairs:
        out = CliRunner().invoke(main, ["materialize", "-m", model, "-p", prompt], env=env)
        assert out.exit_code == 0, out.output
    keys = {(model_table()[m].key, prompt_by_key(slugify(p)).key) for m, p in pairs}
    assert len(keys) == len(pairs)
    layout = HomeLayout()
    files = {layout.report_file(m, p) for m, p in keys}
    assert len(files) == len(pairs) and all(f.exists() for f in files)
    for model, prompt in keys:
        text = layout.report_file(model, prompt).read_text(encoding="utf-8")
        assert f"# Detection report: `{model}` × `{prompt}`\n" in text
