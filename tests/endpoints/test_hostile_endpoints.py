"""Endpoints that trickle, inflate or redirect: every request ends within its bound, memory stays
bounded, and nothing is sent on to another server."""

import resource
import time

import pytest

from defake_pipeline.endpoints.chat import check_endpoint
from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.errors import FatalEndpointError
from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator
from defake_pipeline.evaluation.journal import ResponseJournal
from defake_pipeline.prompting.spec import find_prompt, load_prompt
from defake_pipeline.testing.chat_server import ChatServer, Faults, ServerState

SIMPLE = load_prompt(find_prompt("simple"))


def vllm_at(server, **update):
    return get_model("vllm").model_copy(update={"base_url": server.base_url, "backoff_base_s": 0.01, **update})


def test_a_trickling_model_list_ends_within_timeout_s(chat_server, tmp_path, demo_jobs):
    chat_server.state.models_trickle_interval_s = 0.5  # the list is ~100 bytes: ~50 s in all
    spec = vllm_at(chat_server, timeout_s=3)
    journal = ResponseJournal(tmp_path / "j.sqlite")
    started = time.monotonic()
    with pytest.raises(FatalEndpointError, match=r"/models sent no complete answer within timeout_s=3 s"):
        evaluate_sync(demo_jobs[:2], make_evaluator(spec, SIMPLE, journal))
    journal.close()
    assert time.monotonic() - started < 6
    started = time.monotonic()  # the preflight of `mllmdf materialize` takes the same road
    with pytest.raises(FatalEndpointError, match="sent no complete answer"):
        check_endpoint(spec, None)
    assert time.monotonic() - started < 6
    assert chat_server.state.n_chat == 0


def test_a_registered_models_trickling_model_list_ends_its_run_in_one_line(chat_server, tmp_path, monkeypatch):
    """No preflight for a registered model: its partition run meets the endpoint, and the
    terminal gets the error's line, not the step's stack trace."""
    from click.testing import CliRunner

    from conftest import demo_dataset
    from defake_pipeline.cli import main

    chat_server.state.models_trickle_interval_s = 0.5
    demo_dataset(tmp_path)
    (tmp_path / "models.toml").write_text(
        f'registered = ["slow"]\n[models.slow]\npreset = "vllm"\nbase_url = "{chat_server.base_url}"\ntimeout_s = 3\n'
    )
    monkeypatch.chdir(tmp_path)
    env = {"DEFAKE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dh")}
    started = time.monotonic()
    result = CliRunner().invoke(main, ["materialize", "-m", "slow", "-p", "simple"], env=env)
    assert time.monotonic() - started < 30
    assert result.exit_code == 2, result.output
    assert "Stack Trace" not in result.output and 'File "' not in result.output, result.output
    error = f"error: {chat_server.base_url}/models sent no complete answer within timeout_s=3 s"
    assert result.output.strip().splitlines()[-1] == error
    assert chat_server.state.n_chat == 0


def test_a_gzip_bomb_is_an_error_row_within_bounded_memory(chat_server, tmp_path, demo_jobs):
    chat_server.state.faults = Faults(rate_gzip_bomb=1.0, gzip_bomb_mb=2048)
    spec = vllm_at(chat_server, timeout_s=60)
    journal = ResponseJournal(tmp_path / "j.sqlite")
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    preds = evaluate_sync(demo_jobs[:1], make_evaluator(spec, SIMPLE, journal))
    journal.close()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    (pred,) = preds
    assert pred.error and "over 16 MB once inflated" in pred.error and pred.verdict == "unknown"
    assert chat_server.state.n_chat == 1  # not retried: the same request would bring the same body
    assert grown_mb < 200, f"peak memory grew {grown_mb:.0f} MB"


def test_a_redirect_to_another_server_is_refused_with_one_line(tmp_path, demo_jobs):
    with ChatServer(ServerState()) as elsewhere, ChatServer(ServerState()) as origin:
        origin.state.faults = Faults(rate_redirect=1.0, redirect_url=f"{elsewhere.base_url}/chat/completions")
        journal = ResponseJournal(tmp_path / "j.sqlite")
        with pytest.raises(FatalEndpointError, match=r"answered HTTP 307, a redirect to http://127\.0\.0\.1:\d+;"):
            evaluate_sync(demo_jobs[:3], make_evaluator(vllm_at(origin), SIMPLE, journal))
        journal.close()
        assert elsewhere.state.n_chat == 0 and elsewhere.state.n_models == 0
        assert 1 <= origin.state.n_chat <= 3


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_answers_are_read_whole(chat_server, tmp_path, demo_jobs, encoding):
    chat_server.state.compress_answers = encoding
    journal = ResponseJournal(tmp_path / "j.sqlite")
    preds = evaluate_sync(demo_jobs, make_evaluator(vllm_at(chat_server), SIMPLE, journal))
    journal.close()
    assert all(p.error is None and p.verdict in ("real", "fake") for p in preds), [p.error for p in preds]
    assert len(preds) == len(demo_jobs) == chat_server.state.n_ok


def test_a_long_compressed_answer_is_inflated_to_its_last_byte(chat_server, tmp_path, demo_jobs):
    chat_server.state.compress_answers = "gzip"
    chat_server.state.responder = lambda body: "texture " * 60_000 + "so: real"  # 480 KB, inflated in pieces
    journal = ResponseJournal(tmp_path / "j.sqlite")
    [pred] = evaluate_sync(demo_jobs[:1], make_evaluator(vllm_at(chat_server), SIMPLE, journal))
    journal.close()
    assert pred.error is None and pred.verdict == "real", pred.error
