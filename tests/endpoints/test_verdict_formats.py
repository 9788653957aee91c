"""Constrained verdicts (``verdict_format``) against the project's test server, which checks and
honours OpenAI's and vLLM's structured outputs; and the snapshot that answered, recorded."""

import json

import openai
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import real_fake_dataset
from defake_pipeline.cli import main

KEY = "sk-test-formats"


@pytest.fixture
def project(tmp_path, monkeypatch, defake_home, chat_server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    chat_server.state.api_key = KEY
    real_fake_dataset(tmp_path, "set", 8)
    url = chat_server.base_url
    (tmp_path / "models.toml").write_text(
        "registered = []\n"
        f'[models.hosted]\npreset = "gpt4omini"\nbase_url = "{url}"\nverdict_format = "json_schema"\n'
        f'[models.served]\npreset = "vllm"\nbase_url = "{url}"\nverdict_format = "choice"\n'
        f'[models.free]\npreset = "gpt4omini"\nbase_url = "{url}"\n'
    )
    return tmp_path


def _infer(model: str, name: str, prompt: str = "simple"):
    return CliRunner().invoke(main, ["infer", "-m", model, "-p", prompt, "-d", "set", "-c", "0", "-o", name])


def _final_bodies(server) -> list[dict]:
    return [b for b in server.state.bodies if "messages" in b]


def test_json_schema_sends_openais_structured_outputs_and_leaves_no_unknown(project, defake_home, chat_server):
    chat_server.state.responder = lambda body: "Hard to say. Maybe real, maybe generated; I lean generated."
    result = _infer("hosted", "js")
    assert result.exit_code == 0, result.output
    [fmt] = {json.dumps(b["response_format"], sort_keys=True) for b in _final_bodies(chat_server)}
    assert json.loads(fmt) == {
        "type": "json_schema",
        "json_schema": {
            "name": "verdict",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"verdict": {"type": "string", "enum": ["real", "generated"]}},
                "required": ["verdict"],
                "additionalProperties": False,
            },
        },
    }
    assert all("structured_outputs" not in b for b in _final_bodies(chat_server))
    rows = pd.read_csv(defake_home / "js.csv")
    assert len(rows) == 16 and (rows["verdict"] == "fake").all()
    assert set(rows["response"]) == {'{"verdict": "generated"}'}


def test_a_prompt_that_asks_for_reasons_gets_a_reason_before_the_verdict(project, defake_home, chat_server):
    (project / "prompts").mkdir()
    prompt = {
        "format_version": "3",
        "name": "explained",
        "conversations": [
            {
                "id": "only",
                "payload": [["user", "Explain your reasoning, then say real or generated.", "{image_url}"]],
                "response_var_name": "result",
            }
        ],
    }
    (project / "prompts" / "explained.json").write_text(json.dumps(prompt))
    assert _infer("hosted", "why", "explained").exit_code == 0
    schema = _final_bodies(chat_server)[0]["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["reason", "verdict"] and schema["required"] == ["reason", "verdict"]
    rows = pd.read_csv(defake_home / "why.csv")
    assert (rows["verdict"] != "unknown").all()


def test_choice_sends_vllms_structured_outputs_and_leaves_no_unknown(project, defake_home, chat_server):
    chat_server.state.responder = lambda body: "I cannot tell."  # free text would be unknown
    result = _infer("served", "choice")
    assert result.exit_code == 0, result.output
    bodies = _final_bodies(chat_server)
    assert {json.dumps(b["structured_outputs"]) for b in bodies} == {'{"choice": ["real", "generated"]}'}
    assert all("response_format" not in b and "guided_choice" not in b for b in bodies)
    rows = pd.read_csv(defake_home / "choice.csv")
    assert len(rows) == 16 and (rows["verdict"] == "real").all() and set(rows["response"]) == {"real"}


def test_the_format_is_part_of_the_cache_key(project, defake_home, chat_server):
    assert _infer("free", "a").exit_code == 0
    assert _infer("hosted", "b").exit_code == 0  # same model id and endpoint, another format: asked again
    assert chat_server.state.n_chat == 32
    assert _infer("hosted", "c").exit_code == 0
    assert chat_server.state.n_chat == 32


@pytest.mark.parametrize("model", ["hosted", "served"])
def test_a_server_that_refuses_the_format_is_one_error_naming_the_model_not_a_run_of_error_rows(
    project, defake_home, chat_server, model
):
    chat_server.state.refuse_structured = True
    result = _infer(model, "refused")
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "refused verdict_format = " in line and f"of model '{model}'" in line and "HTTP 400" in line
    assert not (defake_home / "refused.csv").exists() or len(pd.read_csv(defake_home / "refused.csv")) == 0


def test_the_test_server_rejects_a_malformed_strict_schema_with_a_400(chat_server):
    client = openai.OpenAI(base_url=chat_server.base_url, api_key="x")
    loose = {"type": "object", "properties": {"verdict": {"type": "string"}}}  # strict needs required + no extras
    with pytest.raises(openai.BadRequestError, match="Invalid schema for response_format 'verdict'"):
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "real?"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "verdict", "strict": True, "schema": loose},
            },
        )


def test_every_prediction_records_the_snapshot_that_answered(project, defake_home, chat_server):
    chat_server.state.snapshot = "gpt-4o-mini-2024-07-18"
    assert _infer("free", "snap").exit_code == 0
    rows = pd.read_csv(defake_home / "snap.csv")
    assert set(rows["served_model"]) == {"gpt-4o-mini-2024-07-18"}


def test_reports_and_the_leaderboard_name_the_snapshots_that_answered(project, defake_home, chat_server):
    import dagster as dg
    from PIL import Image

    from defake_pipeline.cli.launch import materialize_evaluation
    from defake_pipeline.warehouse.layout import HomeLayout

    instance = dg.DagsterInstance.ephemeral()
    chat_server.state.snapshot = "gpt-4o-mini-2024-07-18"
    materialize_evaluation(instance, ["hosted"], ["simple"])
    report = HomeLayout(defake_home).report_file("hosted", "simple")
    text = report.read_text()
    assert "| Answered by | `gpt-4o-mini-2024-07-18` (16) |" in text
    assert "| Verdict format | `json_schema` (16) |" in text
    # Four more images, answered by the next snapshot: the run now has two.
    for i in range(4):
        Image.new("RGB", (16, 16), (i, 99, 7)).save(project / "set" / "real" / f"new{i}.png")
    chat_server.state.snapshot = "gpt-4o-mini-2025-01-01"
    materialize_evaluation(instance, ["hosted"], ["simple"])
    text = report.read_text()
    assert "`gpt-4o-mini-2024-07-18` (16), `gpt-4o-mini-2025-01-01` (4): **more than one snapshot answered" in text
    board = HomeLayout(defake_home).leaderboard_file.read_text()
    assert (
        "| `hosted` | `simple` | `gpt-4o-mini-2024-07-18` (16), `gpt-4o-mini-2025-01-01` (4): "
        "**more than one snapshot** |" in board
    )
