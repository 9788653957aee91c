"""Partitions run on Celery workers that share no disk, through Dagster's own machinery: the
shipped dagster.yaml (Postgres storage, CeleryRunLauncher), a backfill with a run per partition,
DEFAKE_HOME on an S3-compatible store and the journal in Postgres."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import psycopg2
import pytest
from celery_deployment import Deployment, make_project

from conftest import (
    PLANTED_PASSWORD,
    assert_no_password_in_database,
    assert_no_password_under,
    project_dagster_home,
)
from defake_pipeline.testing.chat_server import ChatServer, ServerState
from defake_pipeline.testing.redis_server import RedisServer

pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
N_PER_CLASS = 250  # 500 images in the project's one dataset
PARTITIONS = [f"vlm|ask{i}" for i in range(4)]
TABLES = ("image_manifest", "predictions", "partition_gate", "metrics", "comparisons")
# What differs between two builds over the same answers: when each row was written, whether
# this run paid for it, and the partitions the Postgres instance knows but nobody ran.
SELECTS = {
    "predictions": "SELECT * EXCLUDE (created_at, n_requests) FROM predictions",
    "partition_gate": "SELECT * FROM partition_gate WHERE status <> 'missing'",
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, postgres, s3):
    root = tmp_path_factory.mktemp("celery")
    project = make_project(root, N_PER_CLASS, prompts=len(PARTITIONS) + 2)
    with RedisServer() as redis, ChatServer(ServerState()) as chat:
        chat.state.latency_s = 0.2
        deployment = Deployment(root, project, postgres, s3, redis, chat)
        deployment.chat = chat
        deployment.project = project
        deployment.start_daemon()
        for name in ("w1", "w2"):
            deployment.start_worker(name)
        try:
            yield deployment
        finally:
            deployment.stop()


def _partitions_in(log: str) -> set[str]:
    return set(re.findall(r"(vlm\|[a-z0-9_]+): \d+ images:", log))


def _only_logs_in(folder: Path) -> None:
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert left == ["worker.log"], left


def _journal_count(deployment: Deployment) -> int:
    conn = psycopg2.connect(deployment.journal_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM answers")
        n = cur.fetchone()[0]
    conn.close()
    return n


def _manifest_images(deployment: Deployment) -> int:
    fs = deployment.s3.fs
    files = fs.find(deployment.s3.url("live", "manifests"))
    return sum(len(pd.read_parquet(io.BytesIO(fs.cat(f)))) for f in files)


def _tables(database: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(database), read_only=True) as con:
        return {t: sorted(con.execute(SELECTS.get(t, f"SELECT * FROM {t}")).fetchall(), key=repr) for t in TABLES}


def test_one_backfill_spreads_over_both_workers_and_lands_in_object_storage(deployment, tmp_path):
    d = deployment
    d.dagster("job", "launch", "-j", "refresh_manifests")
    d.wait_runs("refresh_manifests", 1)
    n_images = _manifest_images(d)
    assert n_images >= 2 * N_PER_CLASS
    d.dagster("job", "backfill", "-j", "evaluate", "--partitions", ",".join(PARTITIONS), "--noprompt")
    d.wait_runs("evaluate", len(PARTITIONS))
    by_worker = {name: _partitions_in(d.worker_log(name)) for name in ("w1", "w2")}
    assert all(by_worker.values()), by_worker  # each worker ran partitions
    assert set().union(*by_worker.values()) == set(PARTITIONS)
    assert d.chat.state.n_ok == len(PARTITIONS) * n_images
    assert _journal_count(d) == d.chat.state.n_ok  # every answer in Postgres
    fs = d.s3.fs
    stored = [f for f in fs.find(d.s3.url("live", "predictions")) if "model=vlm" in f]
    assert sum(len(pd.read_parquet(io.BytesIO(fs.cat(f)))) for f in stored) == len(PARTITIONS) * n_images
    for name in ("w1", "w2"):
        _only_logs_in(d.root / name)

    # The warehouse, rebuilt by a worker from the store, equals one built on local disk from
    # the same answers (the local run finds every answer in the journal and pays nothing).
    d.dagster("job", "launch", "-j", "publish")
    d.wait_runs("publish", 1)
    fs.get_file(d.s3.url("live", "defake.duckdb"), str(tmp_path / "remote.duckdb"))
    env = {k: v for k, v in d.env.items() if k != "DEFAKE_PARTITIONS_PER_RUN"}
    env.update(DEFAKE_HOME=str(tmp_path / "local"), DAGSTER_HOME=str(project_dagster_home(tmp_path)))
    prompts = [arg for p in PARTITIONS for arg in ("--prompt", p.split("|")[1])]
    mllmdf = str(Path(sys.executable).with_name("mllmdf"))
    proc = subprocess.run(
        [mllmdf, "materialize", "--model", "vlm", *prompts], cwd=d.project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert d.chat.state.n_ok == len(PARTITIONS) * n_images
    remote, local = _tables(tmp_path / "remote.duckdb"), _tables(tmp_path / "local" / "defake.duckdb")
    for table in TABLES:
        assert remote[table] == local[table], table


def test_a_fresh_worker_reruns_warm(deployment):
    d = deployment
    asked = d.chat.state.n_ok
    for name in ("w1", "w2"):
        d.stop_worker(name)
    fresh = d.start_worker("w3")
    done = len([s for _, s in d.runs("evaluate") if s == "SUCCESS"])
    d.dagster("job", "backfill", "-j", "evaluate", "--partitions", ",".join(PARTITIONS), "--noprompt")
    d.wait_runs("evaluate", done + len(PARTITIONS))
    assert d.chat.state.n_ok == asked, "a warm rerun paid again"
    assert _partitions_in(d.worker_log("w3")) == set(PARTITIONS)
    assert len(re.findall(r"vlm\|ask\d: \d+ images: \d+ from the journal, 0 new answers", d.worker_log("w3"))) == 4
    _only_logs_in(fresh)


def test_two_runs_of_one_partition_on_two_workers_pay_once_and_both_succeed(deployment):
    d = deployment
    asked, n_images = d.chat.state.n_ok, _manifest_images(d)
    done = len([s for _, s in d.runs("evaluate") if s == "SUCCESS"])
    d.start_worker("w4")  # beside w3: each takes one of the two runs
    for _ in range(2):
        d.dagster("job", "backfill", "-j", "evaluate", "--partitions", f"vlm|ask{len(PARTITIONS)}", "--noprompt")
    d.wait_runs("evaluate", done + 2)  # fails on a failed run
    assert d.chat.state.n_ok == asked + n_images


def test_a_worker_killed_mid_run_loses_only_its_requests_in_flight_and_another_finishes(deployment):
    d = deployment
    d.stop_worker("w4")  # w3 alone takes the run
    d.chat.state.latency_s = 1.0  # 16 answers a second: the run lasts about 30 s
    asked, n_images = d.chat.state.n_ok, _manifest_images(d)
    done = len([s for _, s in d.runs("evaluate") if s == "SUCCESS"])
    key = f"vlm|ask{len(PARTITIONS) + 1}"
    # A run of its own, as the daemon's sensors and asset backfills launch them (Dagster does not
    # launch again a failed run of a job backfill that has ended).
    d.dagster("job", "launch", "-j", "evaluate", "--tags", json.dumps({"dagster/partition": key}))
    deadline = time.monotonic() + 120
    while d.chat.state.n_ok < asked + 100:
        assert time.monotonic() < deadline, d.logs()
        time.sleep(0.2)
    d.kill_worker("w3")
    replacement = d.start_worker("w5")
    deadline = time.monotonic() + 300
    while len([s for _, s in d.runs("evaluate") if s == "SUCCESS"]) < done + 1:
        assert time.monotonic() < deadline, d.logs()
        time.sleep(1)
    d.chat.state.latency_s = 0.2
    # The lost worker's run failed by the run monitor, then launched again and finished by w5.
    assert [s for _, s in d.runs("evaluate")].count("FAILURE") == 1
    assert "Celery worker w3@" in (d.root / "daemon.log").read_text(errors="replace")
    concurrency = 16
    assert d.chat.state.n_ok - asked <= n_images + concurrency  # only what was in flight, paid twice
    assert key in _partitions_in(d.worker_log("w5"))
    stored = d.s3.url("live", "predictions", "model=vlm", f"prompt=ask{len(PARTITIONS) + 1}.parquet")
    assert len(pd.read_parquet(io.BytesIO(d.s3.fs.cat(stored)))) == n_images
    _only_logs_in(replacement)


def test_no_password_in_any_log_file_table_or_object(deployment):
    d = deployment
    for name in ("daemon.log", "code_server.log"):
        assert PLANTED_PASSWORD not in (d.root / name).read_text(errors="replace")
    assert_no_password_under(d.root)
    assert_no_password_in_database(d.instance_url)
    assert_no_password_in_database(d.journal_url)
    for key in d.s3.fs.find(d.s3.url()):
        assert PLANTED_PASSWORD.encode() not in d.s3.fs.cat(key), key
