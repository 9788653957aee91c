"""Answers belong to what gave them, and what is billed is kept and counted.

Each test runs the real engine, with the real openai client, against the project's test
server on 127.0.0.1.
"""

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.errors import FatalEndpointError
from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator
from defake_pipeline.evaluation.journal import ResponseJournal
from defake_pipeline.prompting.spec import find_prompt, load_prompt
from defake_pipeline.records import ImageJob
from defake_pipeline.testing.answers import REFUSAL_TEXT
from defake_pipeline.testing.chat_server import ChatServer, Faults, ServerState

SIMPLE = load_prompt(find_prompt("simple"))


def images(folder: Path, n: int, copies: int = 0) -> list[ImageJob]:
    """n distinct images, then `copies` byte-identical copies of the first ones under other names."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (16, 16), (i, 40, 90)).save(path)
        jobs.append(ImageJob(path=path, key=hashlib.sha256(path.read_bytes()).hexdigest(), label=i % 2))
    for i in range(copies):
        copy = folder / f"copy-{i}.png"
        shutil.copyfile(jobs[i].path, copy)
        jobs.append(ImageJob(path=copy, key=jobs[i].key, label=jobs[i].label))
    return jobs


def evaluate(spec, jobs, journal_path: Path, **kwargs):
    journal = ResponseJournal(journal_path)
    try:
        evaluator = make_evaluator(spec, SIMPLE, journal, None, kwargs.pop("max_cost_usd", None))
        return evaluate_sync(jobs, evaluator, **kwargs), evaluator
    finally:
        journal.close()


def vllm_at(server: ChatServer, name: str = "vllm", **update):
    return get_model("vllm").model_copy(update={"name": name, "base_url": server.base_url, **update})


@pytest.fixture
def two_servers_one_id():
    """Two endpoints that both say their model is `same-id`: one always answers real, one generated."""
    first = ServerState(served_model="same-id", responder=lambda body: "It is real.")
    second = ServerState(served_model="same-id", responder=lambda body: "It is generated.")
    with ChatServer(first) as a, ChatServer(second) as b:
        yield a, b


def test_two_endpoints_serving_one_id_each_answer_their_own_model(two_servers_one_id, tmp_path):
    a, b = two_servers_one_id
    jobs = images(tmp_path / "imgs", 20)
    journal = tmp_path / "journal.sqlite"
    m1, _ = evaluate(vllm_at(a, "m1"), jobs, journal)
    m2, _ = evaluate(vllm_at(b, "m2"), jobs, journal)
    assert (a.state.n_chat, b.state.n_chat) == (20, 20)
    assert {p.verdict for p in m1} == {"real"} and {p.verdict for p in m2} == {"fake"}
    again, _ = evaluate(vllm_at(b, "m2"), jobs, journal)
    assert b.state.n_chat == 20 and {p.verdict for p in again} == {"fake"}


def _to_layout_before_endpoints(journal: Path) -> None:
    """Rewrite a journal as the layout that keyed answers by served id alone stored them."""
    with sqlite3.connect(journal) as con:
        con.executescript(
            """
            CREATE TABLE responses (
                model_id TEXT NOT NULL, request_hash TEXT NOT NULL, image_sha256 TEXT NOT NULL,
                response TEXT NOT NULL, prompt_tokens INTEGER NOT NULL DEFAULT 0,
                completion_tokens INTEGER NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0,
                extra TEXT, created_at TEXT NOT NULL, PRIMARY KEY (model_id, request_hash, image_sha256));
            INSERT INTO responses SELECT model_id, request_hash, image_sha256, response, prompt_tokens,
                completion_tokens, latency_s, extra, created_at FROM answers;
            DROP TABLE answers;
            DROP TABLE served_ids;
            """
        )


def test_an_existing_journal_carries_over_and_is_adopted_once(two_servers_one_id, tmp_path):
    a, b = two_servers_one_id
    jobs = images(tmp_path / "imgs", 6)
    journal = tmp_path / "journal.sqlite"
    evaluate(vllm_at(a, "m1"), jobs, journal)
    _to_layout_before_endpoints(journal)
    a.state.reset_counters()
    carried, _ = evaluate(vllm_at(a, "m1"), jobs, journal)
    assert a.state.n_chat == 0 and {p.verdict for p in carried} == {"real"}  # nobody pays again
    other, _ = evaluate(vllm_at(b, "m2"), jobs, journal)
    assert b.state.n_chat == 6 and {p.verdict for p in other} == {"fake"}  # adopted once, not shared


def test_several_served_ids_are_chosen_by_a_stated_rule_recorded_and_a_change_is_said(chat_server, tmp_path):
    chat_server.state.served_models = ["zeta-vlm", "alpha-vlm"]
    jobs = images(tmp_path / "imgs", 3)
    journal = tmp_path / "journal.sqlite"
    first, evaluator = evaluate(vllm_at(chat_server), jobs, journal)
    assert {p.model_id for p in first} == {"alpha-vlm"}
    assert any("lists 2 ids" in n and "'alpha-vlm'" in n for n in evaluator.notices), evaluator.notices
    # The server lists its models in another order, and a new one: the choice stays, silently.
    chat_server.state.served_models = ["beta-vlm", "zeta-vlm", "alpha-vlm"]
    chat_server.state.reset_counters()
    second, evaluator = evaluate(vllm_at(chat_server), jobs, journal)
    assert {p.model_id for p in second} == {"alpha-vlm"} and chat_server.state.n_chat == 0
    assert evaluator.notices == []
    # The chosen id is gone: another is evaluated, paid for anew, and the change is said.
    chat_server.state.served_models = ["zeta-vlm", "beta-vlm"]
    third, evaluator = evaluate(vllm_at(chat_server), jobs, journal)
    assert {p.model_id for p in third} == {"beta-vlm"} and chat_server.state.n_chat == 3
    assert any("'alpha-vlm' is no longer served" in n and "'beta-vlm'" in n for n in evaluator.notices)


@pytest.mark.parametrize("fault", ["rate_refusal", "rate_null_content", "rate_no_choices"])
def test_a_billed_answer_with_no_text_is_journaled_once_as_unknown(chat_server, tmp_path, fault):
    chat_server.state.faults = Faults(**{fault: 1.0})
    jobs = images(tmp_path / "imgs", 10)
    journal = tmp_path / "journal.sqlite"
    spec = vllm_at(chat_server, price_in=1.0, price_out=2.0)
    preds, _ = evaluate(spec, jobs, journal)
    assert chat_server.state.n_chat == 10
    assert all(p.error is None and p.verdict == "unknown" and p.pred == -1 for p in preds)
    assert all(p.refused == (fault == "rate_refusal") for p in preds)
    assert all(p.cost_usd > 0 and p.prompt_tokens > 0 for p in preds)
    if fault == "rate_refusal":  # its words hold "real": a refusal is never read as a verdict
        assert {p.response for p in preds} == {REFUSAL_TEXT}
    again, _ = evaluate(spec, jobs, journal)
    assert chat_server.state.n_chat == 10 and [p.refused for p in again] == [p.refused for p in preds]


def test_max_cost_counts_refusals(chat_server, tmp_path):
    chat_server.state.faults = Faults(rate_refusal=1.0)
    # A small allowance: the first request, before any answer, is estimated with all of it.
    spec = vllm_at(chat_server, price_in=1000.0, price_out=1000.0, concurrency=1, max_tokens=20)
    one, _ = evaluate(spec, images(tmp_path / "probe", 1), tmp_path / "probe.sqlite")
    cap = 15.5 * one[0].cost_usd  # room for 15 refusals (the first request is estimated from its size)
    chat_server.state.reset_counters()
    preds, _ = evaluate(spec, images(tmp_path / "imgs", 30), tmp_path / "journal.sqlite", max_cost_usd=cap)
    assert 10 <= chat_server.state.n_chat <= 15, chat_server.state.n_chat
    assert sum(p.cost_usd for p in preds) <= cap
    assert sum(p.error is not None and "--max-cost" in p.error for p in preds) == 30 - chat_server.state.n_chat


@pytest.mark.parametrize("usage", [-5_000_000_000, "12", 3.5, None])
def test_usage_that_is_not_a_non_negative_integer_is_estimated_and_said(chat_server, tmp_path, usage):
    chat_server.state.faults = Faults(bad_usage=usage) if usage is not None else Faults()
    if usage is None:  # no usage object at all
        chat_server.state.responder = lambda body: "real"
    spec = vllm_at(chat_server, price_in=1.0, price_out=1.0)
    preds, evaluator = evaluate(spec, images(tmp_path / "imgs", 4), tmp_path / "journal.sqlite", max_cost_usd=1.0)
    if usage is None:
        assert evaluator.notices == [] and all(p.prompt_tokens > 0 for p in preds)
        return
    assert all(p.error is None and 0 < p.prompt_tokens < 10_000 and 0 <= p.cost_usd < 0.01 for p in preds)
    assert any("invalid token usage" in n for n in evaluator.notices), evaluator.notices


def test_byte_identical_copies_are_asked_once(chat_server, tmp_path):
    chat_server.state.latency_s = 0.1
    jobs = images(tmp_path / "imgs", 8, copies=3)
    preds, _ = evaluate(vllm_at(chat_server, concurrency=16), jobs, tmp_path / "journal.sqlite")
    assert chat_server.state.n_chat == 8 and len(preds) == 11
    assert sum(p.n_requests for p in preds) == 8 and all(p.error is None for p in preds)


def test_infer_pays_once_per_content(chat_server, tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    images(real, 4, copies=2)
    for i, job in enumerate(images(fake, 4, copies=1)):
        job.path.rename(fake / f"f{i}.png")  # the same bytes as real/ (a label leak); asked once still
    Image.new("RGB", (9, 9), (1, 2, 3)).save(fake / "own.png")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("mllmdf")), "infer", "--model", "vllm", "--prompt", "simple"]
        + ["--real_dir", str(real), "--fake_dir", str(fake), "--count", "0", "-o", "copies"],
        env={"PATH": "/usr/bin:/bin", "DEFAKE_HOME": str(tmp_path / "home"), "BASE_URL": chat_server.base_url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = (tmp_path / "home" / "copies.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and chat_server.state.n_chat == 5


def test_refusals_reach_metrics_and_the_report_as_a_refusal_rate(chat_server, tmp_path):
    from defake_pipeline.datasets.layouts import DatasetSpec
    from defake_pipeline.datasets.refresh import refresh_manifest
    from defake_pipeline.evaluation.partition import evaluate_partition
    from defake_pipeline.reporting.render import write_report
    from defake_pipeline.warehouse.database import query, rebuild_warehouse
    from defake_pipeline.warehouse.layout import HomeLayout

    images(tmp_path / "data" / "real", 5)
    for i, job in enumerate(images(tmp_path / "data" / "fake", 5)):
        Image.new("RGB", (20, 20), (i, 200, 1)).save(job.path)
    layout = HomeLayout(tmp_path / "home")
    refresh_manifest(layout, DatasetSpec(name="d", root=tmp_path / "data"))
    chat_server.state.faults = Faults(rate_refusal=0.5, seed=7)
    spec = vllm_at(chat_server, price_in=1.0, price_out=1.0)
    summary = evaluate_partition(layout, spec, SIMPLE)
    rebuild_warehouse(layout)
    row = query(layout, "SELECT n_refused, refusal_rate, n_error FROM metrics WHERE scope = 'dataset'").iloc[0]
    refused = chat_server.state.n_faults
    assert 0 < refused < 10 and row.n_refused == refused and row.n_error == 0 and summary.n_errors == 0
    assert row.refusal_rate == pytest.approx(refused / 10)
    report = write_report(layout, spec.key, SIMPLE.key).path.read_text()
    assert "| Refused |" in report and f"| {refused} ({100 * refused / 10:.1f}%) |" in report


def test_an_endpoint_that_refuses_everything_is_said_to_in_the_leaderboard(chat_server, tmp_path):
    """Every answer refused: the partition fails the gate (no verdicts), and the reason it is
    left unranked says the answers were refusals, not just unknown."""
    from defake_pipeline.datasets.layouts import DatasetSpec
    from defake_pipeline.datasets.refresh import refresh_manifest
    from defake_pipeline.evaluation.partition import evaluate_partition
    from defake_pipeline.reporting.render import write_leaderboard
    from defake_pipeline.warehouse.database import query, rebuild_warehouse
    from defake_pipeline.warehouse.layout import HomeLayout

    images(tmp_path / "data" / "real", 5)
    for i, job in enumerate(images(tmp_path / "data" / "fake", 5)):
        Image.new("RGB", (20, 20), (i, 200, 1)).save(job.path)
    layout = HomeLayout(tmp_path / "home")
    refresh_manifest(layout, DatasetSpec(name="d", root=tmp_path / "data"))
    chat_server.state.faults = Faults(rate_refusal=1.0)
    spec = vllm_at(chat_server, price_in=1.0, price_out=1.0)
    evaluate_partition(layout, spec, SIMPLE)
    assert chat_server.state.n_chat == 10
    rebuild_warehouse(layout)
    row = query(layout, "SELECT refusal_rate, cost_usd FROM metrics WHERE scope = 'dataset'").iloc[0]
    assert row.refusal_rate == 1.0 and row.cost_usd > 0
    reason = "unknown rate 100.0% over the 50% limit (10 of 10 answers refused)"
    assert query(layout, "SELECT reason FROM partition_gate").iloc[0].reason == reason
    assert "10 of 10 answers refused" in write_leaderboard(layout)[0].read_text()
    evaluate_partition(layout, spec, SIMPLE)
    assert chat_server.state.n_chat == 10  # a rerun pays nothing


def test_infer_against_an_endpoint_that_refuses_everything_pays_once_and_says_so(chat_server, tmp_path):
    chat_server.state.faults = Faults(rate_refusal=1.0)
    real, fake = tmp_path / "real", tmp_path / "fake"
    images(real, 5)
    for i, job in enumerate(images(fake, 5)):
        Image.new("RGB", (20, 20), (i, 200, 1)).save(job.path)
    (tmp_path / "models.toml").write_text('[models.priced]\npreset = "vllm"\nprice_in = 1.0\nprice_out = 1.0\n')
    command = [str(Path(sys.executable).with_name("mllmdf")), "infer", "--model", "priced", "--prompt", "simple"]
    command += ["--real_dir", str(real), "--fake_dir", str(fake), "--count", "0", "-o", "refused", "--overwrite"]
    env = {"PATH": "/usr/bin:/bin", "DEFAKE_HOME": str(tmp_path / "home"), "BASE_URL": chat_server.base_url}
    outputs = []
    for _ in range(2):
        out = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        outputs.append(out.stderr)
    assert chat_server.state.n_chat == 10
    assert "(0 errors, 10 unknown (10 refused)); this run: 10 images, 10 new answers" in outputs[0]
    assert "this run: 10 images, 0 new answers" in outputs[1]
    import pandas as pd

    rows = pd.read_csv(tmp_path / "home" / "refused.csv")
    assert rows["refused"].all() and (rows["cost_usd"] > 0).all()  # billed, so costed


def test_a_preset_is_evaluated_only_on_a_server_of_its_model(chat_server, tmp_path):
    """A preset's answers are published under its name: a server of another model is refused
    before anything is sent, and among several ids the preset's own is chosen."""
    jobs = images(tmp_path / "imgs", 3)
    journal = tmp_path / "journal.sqlite"
    qwen = get_model("qwen2vl").model_copy(update={"base_url": chat_server.base_url})
    chat_server.state.served_models = ["OpenGVLab/InternVL3-8B"]
    with pytest.raises(FatalEndpointError, match=r"lists 'OpenGVLab/InternVL3-8B', not a qwen2vl model.*--model vllm"):
        evaluate(qwen, jobs, journal)
    assert chat_server.state.n_chat == 0
    chat_server.state.served_models = ["OpenGVLab/InternVL3-8B", "Qwen/Qwen2-VL-7B-Instruct"]
    preds, evaluator = evaluate(qwen, jobs, journal)
    assert {p.model_id for p in preds} == {"Qwen/Qwen2-VL-7B-Instruct"} and evaluator.notices == []
    # Whatever is served, under the generic preset; and a named id is the user's word.
    chat_server.state.served_models = ["OpenGVLab/InternVL3-8B"]
    assert {p.model_id for p in evaluate(vllm_at(chat_server), jobs, journal)[0]} == {"OpenGVLab/InternVL3-8B"}
    named, _ = evaluate(qwen.model_copy(update={"model": "my-finetune"}), jobs, journal)
    assert {p.model_id for p in named} == {"my-finetune"}


@pytest.mark.parametrize(
    ("preset", "served_id"),
    [
        ("llama32vi", "meta-llama/Llama-3.2-11B-Vision-Instruct"),
        ("llavacot", "Xkev/Llama-3.2V-11B-cot"),
        ("qvq", "Qwen/QVQ-72B-Preview"),
        ("internvl25", "OpenGVLab/InternVL2_5-8B"),
        ("internvl3", "OpenGVLab/InternVL3-8B"),
        ("onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
        ("qwen2vl", "Qwen/Qwen2-VL-7B-Instruct"),
    ],
)
def test_each_self_hosted_preset_takes_its_published_checkpoint_and_no_other(preset, served_id):
    spec = get_model(preset)
    assert spec.serves_id(served_id)
    others = ["Qwen/Qwen2.5-VL-7B-Instruct", "OpenGVLab/InternVL3_5-8B", "llava-hf/llava-1.5-7b-hf"]
    assert not any(spec.serves_id(other) for other in others)


@pytest.mark.parametrize(
    ("answered", "kept"),
    [
        ("gpt-4o-2024-08-06", True),  # OpenAI names the dated snapshot that answered
        ("gpt-4o", True),
        ("claude-3-5-sonnet-20241022", False),  # a gateway that fell back to another model
        ("gpt-4o-mini-2024-07-18", False),
    ],
)
def test_answers_another_model_gave_are_not_published_under_this_ones_name(chat_server, tmp_path, answered, kept):
    """OPENAI_BASE_URL may lead to a gateway that answers a request for gpt-4o with another model
    and names it in the answer's ``model``: that answer is not gpt4o's, so it is neither kept nor
    counted, and the run stops before paying for more of them."""
    chat_server.state.answered_by = answered
    jobs = images(tmp_path / "imgs", 8)
    journal = ResponseJournal(tmp_path / "journal.sqlite")
    spec = get_model("gpt4o").with_endpoint_urls(None, chat_server.base_url).model_copy(update={"concurrency": 1})
    try:
        run = evaluate_sync(jobs, make_evaluator(spec, SIMPLE, journal, "sk-test"))
        assert kept, "answers of another model were published as gpt4o's"
        assert {p.served_model for p in run} == {answered} and chat_server.state.n_chat == 8
    except FatalEndpointError as exc:
        assert not kept, exc
        assert f"{answered!r}" in str(exc) and "'gpt-4o'" in str(exc) and "gpt4o" in str(exc)
        assert chat_server.state.n_chat == 1  # the first such answer stops the run
        assert journal.count() == 0
    finally:
        journal.close()


def test_a_batch_line_another_model_answered_is_a_failed_request(tmp_path):
    from defake_pipeline.evaluation.batch import BatchOutcome, journal_batch_lines
    from defake_pipeline.evaluation.batch_records import BatchRequest
    from defake_pipeline.evaluation.journal import AnswerKey

    requests = {c: BatchRequest(c, AnswerKey("e", "gpt-4o-mini", c, "s"), 10) for c in ("own", "other")}

    def line(custom_id: str, model: str) -> str:
        body = {"model": model, "choices": [{"message": {"content": "real"}}]}
        return json.dumps({"custom_id": custom_id, "response": {"status_code": 200, "body": body}})

    journal = ResponseJournal(tmp_path / "journal.sqlite")
    outcome = BatchOutcome()
    lines = [line("own", "gpt-4o-mini-2024-07-18"), line("other", "llama-3-70b")]
    journal_batch_lines(get_model("gpt4omini"), journal, requests, lines, "batch_x", outcome)
    assert (outcome.answered, outcome.failed) == (1, 1)
    assert outcome.outcomes["other"][0] == "failed" and "'llama-3-70b'" in outcome.outcomes["other"][1]
    assert journal.get(requests["other"].key) is None and journal.get(requests["own"].key) is not None
    journal.close()


def test_a_vllm_server_naming_its_first_served_name_for_an_alias_is_kept(chat_server, tmp_path):
    """vLLM answers with its first --served-model-name whichever alias was asked: what a self-hosted
    server serves is checked at /v1/models, not by the name in each answer."""
    chat_server.state.served_models = ["qwen-alias"]
    chat_server.state.answered_by = "Qwen/Qwen2-VL-7B-Instruct"
    preds, _ = evaluate(vllm_at(chat_server), images(tmp_path / "imgs", 4), tmp_path / "journal.sqlite")
    assert {p.error for p in preds} == {None} and {p.served_model for p in preds} == {"Qwen/Qwen2-VL-7B-Instruct"}
