"""The response journal on a real PostgreSQL server: the same semantics as SQLite's, leases
that hold across machines and expire when their worker dies, and no password in any output."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from conftest import PLANTED_PASSWORD as PASSWORD
from conftest import assert_no_password_under, real_fake_dataset
from defake_pipeline.errors import JournalWriteError
from defake_pipeline.evaluation.journal import AnswerKey, Claim, JournalEntry, open_journal

MLLMDF = str(Path(sys.executable).with_name("mllmdf"))
# A model whose lease is short: (timeout 2 s + wait 1 s) × 1 attempt.
MODELS_TOML = """registered = ["pgtest"]
[models.pgtest]
preset = "vllm"
timeout_s = 2
max_retries = 0
max_retry_wait_s = 1
concurrency = 4
"""


@pytest.fixture
def journal_url(postgres, request):
    return postgres.create_database(f"j_{request.node.name[5:40]}".lower())


def _key(i: int) -> AnswerKey:
    return AnswerKey("http://127.0.0.1:1/v1", "m", "req", f"{i:064x}")


def test_the_postgres_journal_keeps_the_sqlite_journals_rules(journal_url):
    one, two = open_journal(journal_url), open_journal(journal_url)
    try:
        assert one.claim(_key(1), ttl_s=60) is Claim.ASK
        assert two.claim(_key(1), ttl_s=60) is Claim.WAIT  # another worker's live lease
        assert one.claim(_key(1), ttl_s=60) is Claim.WAIT  # a copy of the same image in flight here
        one.put(_key(1), JournalEntry("generated", 10, 2, 0.5, {"turns": 1}))
        assert two.claim(_key(1), ttl_s=60) == JournalEntry("generated", 10, 2, 0.5, {"turns": 1})
        assert two.claim(_key(2), ttl_s=60) is Claim.ASK
        two.release(_key(2))  # its request failed: the next worker asks
        assert one.claim(_key(2), ttl_s=60) is Claim.ASK
        one.record_served_id("http://x/v1", "m", "m-2024")
        assert two.served_id("http://x/v1", "m") == "m-2024"
        assert one.count() == two.count() == 1
    finally:
        one.close()
        two.close()


def test_workers_opening_a_new_database_at_once_all_create_its_tables(journal_url):
    """CREATE TABLE IF NOT EXISTS is not safe against itself in PostgreSQL: two workers that
    open a new database at once both try to create a table, and one fails on pg_type's unique
    index. Every table beside the journal is created under the same lock as the journal's."""
    from concurrent.futures import ThreadPoolExecutor

    from defake_pipeline.evaluation.batch_records import BatchRecords
    from defake_pipeline.evaluation.generations import CacheGenerations
    from defake_pipeline.warehouse.layout import HomeLayout

    layout = HomeLayout(Path("/nonexistent"), journal_url=journal_url)

    def open_both(_):
        for kind in (CacheGenerations, BatchRecords):
            kind(layout).close()

    for _ in range(5):  # each round on an empty database
        with psycopg2.connect(journal_url) as conn, conn.cursor() as cur:
            cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(open_both, range(12)))


def test_a_lease_expires_by_the_databases_clock(journal_url):
    one, two = open_journal(journal_url), open_journal(journal_url)
    try:
        assert one.claim(_key(3), ttl_s=1.0) is Claim.ASK
        assert two.claim(_key(3), ttl_s=1.0) is Claim.WAIT
        time.sleep(1.2)
        assert two.claim(_key(3), ttl_s=60) is Claim.ASK
        assert one.claim(_key(3), ttl_s=60) is Claim.WAIT
    finally:
        one.close()
        two.close()


def test_a_journal_url_that_cannot_be_used_is_one_line_without_its_password(postgres, tmp_path):
    for url in (postgres.url("postgres", password="wrong-" + PASSWORD), postgres.url("no_such_db")):
        with pytest.raises(JournalWriteError) as caught:
            open_journal(url)
        message = str(caught.value)
        assert "\n" not in message and PASSWORD not in message, message
        assert f"127.0.0.1:{postgres.port}" in message
    with pytest.raises(JournalWriteError, match="neither postgresql"):
        open_journal(f"mysql://u:{PASSWORD}@h/db")


def test_a_password_given_as_a_url_parameter_is_not_shown_either(postgres):
    """libpq takes ``?password=`` (and ``sslpassword``) as well as ``user:password@``."""
    where = f"postgresql://defake@127.0.0.1:{postgres.port}"
    for url in (
        f"{where}/postgres?password=wrong-{PASSWORD}",
        f"{where}/db?sslpassword={PASSWORD}&password={PASSWORD}",
    ):
        with pytest.raises(JournalWriteError) as caught:
            open_journal(url)
        message = str(caught.value)
        assert PASSWORD not in message and "password=***" in message, message
    for url in (f"mysql://h/db?password={PASSWORD}", f"host=127.0.0.1 password={PASSWORD} dbname=d"):
        with pytest.raises(JournalWriteError, match="neither postgresql") as caught:
            open_journal(url)
        assert PASSWORD not in str(caught.value)


def _project(tmp_path: Path, n_per_class: int) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "models.toml").write_text(MODELS_TOML)
    real_fake_dataset(project, "pg", n_per_class)
    return project


def _infer(project: Path, home: Path, journal_url: str, server, out: str, wrap=()) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DEFAKE_HOME", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(BASE_URL=server.base_url, DEFAKE_HOME=str(home), DEFAKE_JOURNAL_URL=journal_url)
    args = ["infer", "-m", "pgtest", "-c", "0", "--real_dir", "pg/real", "--fake_dir", "pg/fake", "-o", out]
    return subprocess.Popen(
        [*wrap, MLLMDF, *args], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rows(home: Path, name: str) -> list[dict]:
    return list(csv.DictReader((home / f"{name}.csv").open()))


def test_two_workers_that_share_no_disk_pay_once_for_each_answer(tmp_path, chat_server, journal_url):
    chat_server.state.latency_s = 0.2
    project = _project(tmp_path, 15)
    homes = [tmp_path / "worker-a", tmp_path / "worker-b"]
    procs = [_infer(project, home, journal_url, chat_server, "run") for home in homes]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert PASSWORD not in out + err
    assert chat_server.state.n_ok == 30, "an answer was paid for twice"
    first, second = (sorted((r["path"], r["response"]) for r in _rows(home, "run")) for home in homes)
    assert len(first) == 30 and first == second
    for home in homes:
        assert not (home / "cache").exists(), "no SQLite journal beside the Postgres one"
        assert_no_password_under(home)
    # A warm rerun from a fresh folder asks nothing.
    fresh = tmp_path / "worker-c"
    out, err = _infer(project, fresh, journal_url, chat_server, "again").communicate(timeout=120)
    assert chat_server.state.n_ok == 30, err
    assert "0 new answers" in err and len(_rows(fresh, "again")) == 30


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root's unshare --uts")
def test_a_killed_worker_on_another_host_loses_only_its_requests_in_flight(tmp_path, chat_server, journal_url):
    chat_server.state.latency_s = 0.5
    project = _project(tmp_path, 12)
    # Worker A runs under another host name, as on another machine: its leases can only expire.
    wrap = ("unshare", "--uts", "sh", "-c", 'hostname worker-a && exec "$@"', "sh")
    worker_a = _infer(project, tmp_path / "a", journal_url, chat_server, "run", wrap)
    deadline = time.monotonic() + 60
    while chat_server.state.n_ok < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker_a.send_signal(signal.SIGKILL)
    worker_a.communicate(timeout=30)
    asked_by_a = chat_server.state.n_chat
    conn = psycopg2.connect(journal_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM answers")
        kept = cur.fetchone()[0]
        cur.execute("SELECT DISTINCT host FROM answer_leases")
        hosts = [r[0] for r in cur.fetchall()]
    conn.close()
    # The server counts an answer as it sends it: the last ones may not have reached A's journal
    # when the kill came, and only those (at most A's requests in flight) may be missing.
    assert 0 < kept <= asked_by_a and asked_by_a - kept <= 4, (kept, asked_by_a)
    assert hosts in ([], ["worker-a"])
    out, err = _infer(project, tmp_path / "b", journal_url, chat_server, "run").communicate(timeout=120)
    rows = _rows(tmp_path / "b", "run")
    assert len(rows) == 24 and not any(r["error"] for r in rows), err
    assert chat_server.state.n_chat - asked_by_a == 24 - kept, "worker B asked again for an answer A had kept"


def test_batches_are_recorded_in_the_postgres_journal_and_completed_from_it(
    journal_url, tmp_path, monkeypatch, chat_server
):
    """Batch mode with the journal on PostgreSQL: the batch, its keys and its end are recorded
    there, so a worker on another machine picks it up; no password in any output."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main
    from defake_pipeline.evaluation.batch_records import BatchRecords
    from defake_pipeline.warehouse.layout import HomeLayout

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEFAKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEFAKE_JOURNAL_URL", journal_url)
    monkeypatch.setenv("DEFAKE_BATCH_POLL_S", "1")
    monkeypatch.setenv("BASE_URL", chat_server.base_url)
    chat_server.state.batch_api.settings.step_s = 0.02
    root = real_fake_dataset(tmp_path, "set", 5)
    args = ["infer", "-m", "vllm", "--real_dir", str(root / "real"), "--fake_dir", str(root / "fake"), "-c", "0"]
    sent = CliRunner().invoke(main, [*args, "--batch", "-o", "pg"])
    assert sent.exit_code == 0 and "10 images wait for their batches (sent batch_1;" in sent.output, sent.output
    with psycopg2.connect(journal_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM batch_requests WHERE batch_id = 'batch_1'")
        assert cur.fetchone()[0] == 10
    done = CliRunner().invoke(main, [*args, "--batch", "--wait", "--continue", "-o", "pg"])
    assert done.exit_code == 0, done.output
    records = BatchRecords(HomeLayout())
    [batch] = records.batches()
    records.close()
    assert (batch.status, batch.n_answered) == ("completed", 10)
    assert chat_server.state.n_chat == 0 and PASSWORD not in sent.output + done.output
    assert open_journal(journal_url).count() == 10
    assert_no_password_under(tmp_path / "home")
