"""Endpoint faults, crash safety, secrets, concurrent writers and ports."""

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import (
    PLANTED_PASSWORD,
    QWEN2VL_ID,
    REPO,
    assert_no_password_under,
    demo_dataset,
    materialize_manifest,
    project_dagster_home,
)
from defake_pipeline.cli import main
from defake_pipeline.defs.partitions import register_partitions
from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.errors import FatalEndpointError
from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator
from defake_pipeline.evaluation.journal import ResponseJournal
from defake_pipeline.prompting.spec import find_prompt, load_prompt
from defake_pipeline.records import ImageJob
from defake_pipeline.testing.chat_server import Faults
from defake_pipeline.verdict import parse_verdict

BIN = Path(sys.executable).parent
SIMPLE = load_prompt(find_prompt("simple"))
URL_PASSWORD = "pw-in-the-url-" + hashlib.sha256(b"url").hexdigest()[:12]
SECRET = "sk-proj-PLANTED-7f3a9c1e-do-not-leak"


def started(cmd: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """A process whose output (stdout and stderr together) is read when it ends."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def small_images(folder: Path, n: int) -> list[ImageJob]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (12, 12), (i % 256, i // 256, 99)).save(path)
        jobs.append(ImageJob(path=path, key=hashlib.sha256(path.read_bytes()).hexdigest(), label=i % 2))
    return jobs


def test_500_images_against_a_faulty_endpoint(chat_server, tmp_path):
    chat_server.state.faults = Faults(
        rate_429=0.10, rate_500=0.05, rate_malformed=0.02, rate_empty=0.02, rate_drop=0.02, retry_after_s=0.02
    )
    spec = get_model("vllm").model_copy(
        update={"base_url": chat_server.base_url, "backoff_base_s": 0.02, "concurrency": 32}
    )
    journal = ResponseJournal(tmp_path / "j.sqlite")
    preds = evaluate_sync(small_images(tmp_path / "imgs", 500), make_evaluator(spec, SIMPLE, journal))
    journal.close()
    assert len(preds) == 500 and chat_server.state.n_faults > 50
    for p in preds:
        if p.error:  # retries ran out: recorded as an error, never as a verdict
            assert p.pred == -1 and p.verdict == "unknown" and p.response == ""
        else:  # an answer is the endpoint's real answer for this image
            assert p.verdict == parse_verdict(p.response) != "unknown"
    assert sum(p.error is None for p in preds) >= 495


def test_unreachable_base_url_fails_fast_with_one_line(tmp_path, demo_jobs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    spec = get_model("qwen2vl").model_copy(update={"base_url": f"http://127.0.0.1:{port}/v1"})
    journal = ResponseJournal(tmp_path / "j.sqlite")
    started = time.monotonic()
    with pytest.raises(FatalEndpointError, match=f"cannot reach http://127.0.0.1:{port}/v1"):
        evaluate_sync(demo_jobs, make_evaluator(spec, SIMPLE, journal))
    journal.close()
    assert time.monotonic() - started < spec.timeout_s
    out = subprocess.run(
        [str(BIN / "mllmdf"), "classify", str(demo_jobs[0].path), "--model", "qwen2vl"],
        env={**os.environ, "BASE_URL": f"http://127.0.0.1:{port}/v1", "DEFAKE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "cannot reach" in out.stderr


def test_an_openai_model_nothing_answers_for_stops_on_one_line_not_a_row_of_errors_per_image(tmp_path, demo_jobs):
    """An OpenAI preset asks no /models first (its id is fixed): a mistyped OPENAI_BASE_URL, or a
    dead proxy, gave each image an error row after its retries, read "Request timed out"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    spec = get_model("gpt4o").with_endpoint_urls(None, f"http://127.0.0.1:{port}/v1")
    spec = spec.model_copy(update={"max_retries": 2, "backoff_base_s": 0.01})  # retried, then stopped
    journal = ResponseJournal(tmp_path / "j.sqlite")
    with pytest.raises(FatalEndpointError, match=f"^cannot reach http://127.0.0.1:{port}/v1 for model 'gpt4o'"):
        evaluate_sync(demo_jobs, make_evaluator(spec, SIMPLE, journal, "sk-test"))
    journal.close()


@pytest.mark.parametrize("given_in", ["models.toml", "BASE_URL"])
def test_a_base_url_holding_a_query_is_one_line_that_does_not_show_it(chat_server, tmp_path, monkeypatch, given_in):
    """A key in a base URL's query (``?key=…``) was sent to a mangled path (``/v1?key=…/models``),
    printed in every error line and kept in the journal as the endpoint: it is refused, unshown."""
    url = f"{chat_server.base_url}?key={PLANTED_PASSWORD}"
    demo_dataset(tmp_path)
    entry = f'base_url = "{url}"\n' if given_in == "models.toml" else ""
    (tmp_path / "models.toml").write_text(f'registered = []\n[models.mine]\npreset = "vllm"\n{entry}')
    env = {"DEFAKE_HOME": str(tmp_path / "out"), "BASE_URL": url if given_in == "BASE_URL" else chat_server.base_url}
    monkeypatch.chdir(tmp_path)
    for command in (["estimate"], ["infer", "-d", "demo"], ["classify", str(REPO / "demo" / "real" / "coffee.jpg")]):
        result = CliRunner().invoke(main, [*command, "-m", "mine", "-p", "simple"], env=env)
        assert result.exit_code == 2 and PLANTED_PASSWORD not in result.output, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"error: model 'mine': base URL {chat_server.base_url}?… holds a query, which is not a place for a "
            "key (it would be shown wherever the URL is); give the key as OPENAI_API_KEY"
        )
    assert chat_server.state.n_models == chat_server.state.n_chat == 0
    assert_no_password_under(tmp_path / "out")


@pytest.fixture
def slow_project(tmp_path, chat_server, monkeypatch):
    """A working directory registering a slow, narrow self-hosted model, and a Dagster home."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "models.toml").write_text(
        'registered = ["slowvllm"]\n[models.slowvllm]\npreset = "vllm"\nconcurrency = 2\n'
    )
    demo_dataset(root)
    home = project_dagster_home(tmp_path)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DEFAKE_HOME": str(tmp_path / "out"),
        "BASE_URL": chat_server.base_url,
    }
    return root, env


def test_sigkill_of_a_dagster_partition_run_loses_nothing_answered(slow_project, chat_server, tmp_path, monkeypatch):
    root, env = slow_project
    chat_server.state.latency_s = 0.3
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    register_partitions(instance, ["slowvllm"], ["simple"])
    materialize_manifest(instance, root, env["DEFAKE_HOME"], monkeypatch)
    base = [str(BIN / "dagster"), "asset", "materialize", "-m", "defake_pipeline.definitions"]
    cmd = [*base, "--select", "predictions", "--partition", "slowvllm|simple"]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while chat_server.state.n_ok < 6:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sent = chat_server.state.n_chat
    journal = ResponseJournal(tmp_path / "out" / "cache" / "responses.sqlite")
    answered = journal.count()
    journal.close()
    assert sent - answered <= 2  # only requests in flight were lost
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    assert chat_server.state.n_chat - sent == 16 - answered  # nothing answered was asked again
    rows = pd.read_parquet(tmp_path / "out" / "predictions" / "model=slowvllm" / "prompt=simple.parquet")
    assert len(rows) == 16 and rows["image_sha256"].is_unique and rows["error"].isna().all()


def test_concurrent_writers_lose_no_rows(slow_project, chat_server, tmp_path, monkeypatch):
    root, env = slow_project
    chat_server.state.latency_s = 0.05
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    register_partitions(instance, ["slowvllm"], ["simple", "common_sense"])
    materialize_manifest(instance, root, env["DEFAKE_HOME"], monkeypatch)
    base = [str(BIN / "dagster"), "asset", "materialize", "-m", "defake_pipeline.definitions"]
    demo = REPO / "demo"
    infer = [
        str(BIN / "mllmdf"),
        "infer",
        "--model",
        "slowvllm",
        "--real_dir",
        str(demo / "real"),
        "--fake_dir",
        str(demo / "fake"),
        "--count",
        "0",
    ]
    procs = [
        started([*infer, "-o", "one", "--prompt", "simple"], root, env),
        started([*infer, "-o", "two", "--prompt", "defect_query"], root, env),
        started([*base, "--select", "predictions", "--partition", "slowvllm|common_sense"], root, env),
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert not any(re.search(r"database is locked|Could not set lock", o) for o in outputs)
    out = tmp_path / "out"
    assert len(pd.read_csv(out / "one.csv")) == 16 and len(pd.read_csv(out / "two.csv")) == 16
    assert len(pd.read_parquet(out / "predictions" / "model=slowvllm" / "prompt=common_sense.parquet")) == 16
    journal = ResponseJournal(out / "cache" / "responses.sqlite")
    assert journal.count() == 3 * 16
    journal.close()


def test_a_key_an_endpoint_echoes_in_its_errors_reaches_no_output(chat_server, tmp_path):
    """A gateway that quotes the Authorization header in its 400s: the error rows, the CSV and
    the terminal keep the message with the key masked."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    chat_server.state.faults = Faults(rate_400=1.0, echo_authorization=True)
    chat_server.state.served_model = QWEN2VL_ID
    demo = REPO / "demo"
    env = {"OPENAI_API_KEY": SECRET, "BASE_URL": chat_server.base_url, "DEFAKE_HOME": str(tmp_path / "out")}
    runner = CliRunner()
    classified = runner.invoke(main, ["classify", str(demo / "real" / "coffee.jpg"), "-m", "qwen2vl"], env=env)
    folders = ["--real_dir", str(demo / "real"), "--fake_dir", str(demo / "fake")]
    inferred = runner.invoke(main, ["infer", "-m", "qwen2vl", *folders, "--count", "2"], env=env)
    assert inferred.exit_code == 0, inferred.output
    assert chat_server.state.n_faults == 5  # every request got the quoting 400
    frame = pd.read_csv(tmp_path / "out" / "ImageFolders-2_qwen2vl_simple.csv")
    masked = "Invalid image data (sent with Bearer ***)"
    assert len(frame) == 4 and frame["error"].str.contains(masked, regex=False).all()
    assert masked in classified.output
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix != ".sqlite"]
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []
    assert SECRET not in classified.output + inferred.output


def test_the_api_key_never_reaches_any_output(chat_server, tmp_path, capfd):
    """The key, and a password inside the base URL, appear in no output or file;
    the Bearer key is what authenticates (httpx would send the URL's userinfo as Basic auth)."""
    chat_server.state.api_key = SECRET
    root = tmp_path / "proj"
    root.mkdir()
    (root / "models.toml").write_text('registered = ["gpt4omini"]\n')
    demo_dataset(root)
    home = project_dagster_home(tmp_path)
    out = tmp_path / "out"
    with_password = chat_server.base_url.replace("http://", f"http://defake:{URL_PASSWORD}@")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DEFAKE_HOME": str(out),
        "OPENAI_API_KEY": SECRET,
        "OPENAI_BASE_URL": with_password,
    }
    demo = REPO / "demo"
    logs = []
    for args in (
        [
            "infer",
            "--model",
            "gpt4omini",
            "--real_dir",
            str(demo / "real"),
            "--fake_dir",
            str(demo / "fake"),
            "-v",
            "-l",
            "secret",
        ],
        ["materialize", "--model", "gpt4omini", "--prompt", "simple"],
        ["doc"],
    ):
        proc = subprocess.run(
            [str(BIN / "mllmdf"), *args], cwd=root, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        logs.append(proc.stdout + proc.stderr)
    # A wrong key: its error message must not echo the key either (a new image, so no journal hit).
    wrong = {**env, "OPENAI_API_KEY": SECRET + "-wrong"}
    fresh = root / "fresh.png"
    Image.new("RGB", (10, 10), "orange").save(fresh)
    proc = subprocess.run(
        [str(BIN / "mllmdf"), "classify", str(fresh), "--model", "gpt4omini"],
        cwd=root,
        env=wrong,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and "rejected the API key" in proc.stderr
    logs.append(proc.stdout + proc.stderr)
    assert chat_server.state.n_ok > 0  # the key was really used
    # Nothing listening: the "cannot reach" line names the URL, without its password.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    unreachable = {**env, "BASE_URL": f"http://defake:{URL_PASSWORD}@127.0.0.1:{port}/v1"}
    proc = subprocess.run(
        [str(BIN / "mllmdf"), "classify", str(fresh), "--model", "qwen2vl"],
        cwd=root,
        env=unreachable,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and f"cannot reach http://127.0.0.1:{port}/v1" in proc.stderr, proc.stderr
    logs.append(proc.stdout + proc.stderr)
    for text in logs:
        assert SECRET not in text and URL_PASSWORD not in text
    scanned = 0
    for folder in (out, home, root):
        for path in folder.rglob("*"):
            if path.is_file():
                scanned += 1
                assert SECRET.encode() not in path.read_bytes(), path
                assert URL_PASSWORD.encode() not in path.read_bytes(), path
    assert scanned > 20


def test_everything_served_binds_to_loopback(chat_server):
    from defake_pipeline.cli.pipeline import dagster_dev_command

    assert chat_server.httpd.server_address[0] == "127.0.0.1"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"mllmdf ui --port", makefile)  # make ui is mllmdf ui, which runs this
    command = dagster_dev_command(3000, REPO / "workspace.yaml")
    assert command[command.index("dev") :][:3] == ["dev", "-h", "127.0.0.1"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_a_signal_to_materialize_stops_every_partition_with_one_line(slow_project, chat_server, tmp_path, how):
    """SIGTERM (to the CLI process, as `kill` sends it) or SIGINT (to the group, as
    Ctrl-C sends it) stops every partition at once, keeps what was journaled, and prints one line."""
    root, env = slow_project
    chat_server.state.latency_s = 0.3
    cmd = [
        str(BIN / "mllmdf"),
        "materialize",
        "-m",
        "slowvllm",
        "-p",
        "simple",
        "-p",
        "common_sense",
        "-p",
        "defect_query",
        "-j",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while chat_server.state.n_ok < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    stopped = chat_server.state.n_chat
    time.sleep(2)
    assert chat_server.state.n_chat == stopped, "a partition kept sending after the signal"
    assert proc.returncode == 128 + getattr(signal, how), err
    assert "Traceback" not in err and err.count(f"stopped by {how}") == 1, err
    assert err.strip().splitlines()[-1].startswith(f"error: stopped by {how}")
    journal = ResponseJournal(tmp_path / "out" / "cache" / "responses.sqlite")
    answered = journal.count()
    journal.close()
    assert answered > 0 and stopped - answered <= 2 * 2  # only requests in flight were lost
    assert not list((tmp_path / "out").rglob("*.tmp"))
    runs = dg.DagsterInstance.from_config(env["DAGSTER_HOME"]).get_runs()
    assert not [r.run_id for r in runs if r.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)]


FULL_DISK_RUN = """
import resource, signal, sys
from defake_pipeline.errors import DefakeError
from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.evaluation.partition import evaluate_partition
from defake_pipeline.prompting.spec import find_prompt, load_prompt

layout, base_url, limit = HomeLayout(sys.argv[1]), sys.argv[2], int(sys.argv[3])
spec = get_model("vllm").model_copy(update={"base_url": base_url, "concurrency": 4})
prompt = load_prompt(find_prompt("simple"))
# No file may grow past `limit` bytes from here on: the disk is full for every file written.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    evaluate_partition(layout, spec, prompt)
except DefakeError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def test_a_full_disk_stops_new_requests_at_once_and_leaves_no_temporary_file(chat_server, tmp_path):
    """Once an answer cannot be journaled, nothing more is sent (a rerun would pay
    for every answer sent after it), and the partition's temporary Parquet file is removed.
    RLIMIT_FSIZE stands in for a full disk: every write past the limit fails with EFBIG."""
    from defake_pipeline.datasets.layouts import DatasetSpec
    from defake_pipeline.datasets.refresh import refresh_manifest
    from defake_pipeline.warehouse.layout import HomeLayout

    for i in range(80):
        folder = tmp_path / "data" / ("real" if i % 2 else "fake")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i, 3, 7)).save(folder / f"{i}.png")
    layout = HomeLayout(tmp_path / "home")
    refresh_manifest(layout, DatasetSpec(name="d", root=tmp_path / "data"))
    ResponseJournal(layout.journal).close()  # the journal exists, as after any earlier run
    chat_server.state.latency_s = 0.02
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_RUN, str(layout.home), chat_server.base_url, str(256 * 1024)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The first write that fails may store an answer or record a request in flight: either stops the run.
    assert proc.returncode == 2 and "no further requests are sent" in proc.stderr, proc.stderr
    journal = ResponseJournal(layout.journal)
    journaled = journal.count()
    journal.close()
    sent = chat_server.state.n_chat
    assert 0 < journaled < 80 and sent - journaled <= 4, (sent, journaled)  # only those in flight
    assert not list(layout.home.rglob("*.tmp"))


def test_two_runners_over_the_same_images_pay_once(slow_project, chat_server, tmp_path):
    """A runner waits for the answer another runner is already asking for (the
    journal's leases), so two concurrent runs over the same images pay for each answer once."""
    root, env = slow_project
    chat_server.state.latency_s = 0.2
    demo = REPO / "demo"
    infer = [
        str(BIN / "mllmdf"),
        "infer",
        "--model",
        "slowvllm",
        "--prompt",
        "simple",
        "--real_dir",
        str(demo / "real"),
        "--fake_dir",
        str(demo / "fake"),
        "--count",
        "0",
    ]
    procs = [
        subprocess.Popen(
            [*infer, "-o", name], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name in ("one", "two")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    out = tmp_path / "out"
    one, two = pd.read_csv(out / "one.csv"), pd.read_csv(out / "two.csv")
    assert len(one) == len(two) == 16 and one["error"].isna().all() and two["error"].isna().all()
    assert chat_server.state.n_chat == 16  # no answer paid for twice
