"""The Dagster instance on a real PostgreSQL server, through the deployment's own dagster.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2
import yaml

from conftest import PLANTED_PASSWORD, REPO, assert_no_password_in_database, assert_no_password_under

MLLMDF = str(Path(sys.executable).with_name("mllmdf"))


def test_the_deployments_dagster_yaml_is_the_projects_with_postgres_storage():
    shipped = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    project = yaml.safe_load((REPO / "instance" / "dagster.yaml").read_text())
    assert shipped.pop("storage")["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_POSTGRES_PASSWORD"}
    assert shipped.pop("run_launcher")["class"] == "CeleryRunLauncherWithLostWorkers"
    assert shipped.pop("run_monitoring")["enabled"] is True
    assert shipped.pop("run_retries")["retry_on_asset_or_op_failure"] is False
    assert shipped.pop("compute_logs")["class"] == "NoOpComputeLogManager"
    assert shipped == project


def test_materialize_on_a_postgres_instance_and_journal_keeps_every_password_out(tmp_path, postgres, chat_server):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    instance_db, journal_url = "dagster", postgres.create_database("journal")
    postgres.create_database(instance_db)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        DEFAKE_HOME=str(tmp_path / "home"),
        DEFAKE_JOURNAL_URL=journal_url,
        BASE_URL=chat_server.base_url,
        DAGSTER_POSTGRES_HOST="127.0.0.1",
        DAGSTER_POSTGRES_PORT=str(postgres.port),
        DAGSTER_POSTGRES_USER="defake",
        DAGSTER_POSTGRES_PASSWORD=PLANTED_PASSWORD,
        DAGSTER_POSTGRES_DB=instance_db,
    )
    args = ["materialize", "--model", "canny", "--model", "vllm", "--prompt", "simple"]
    proc = subprocess.run([MLLMDF, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert PLANTED_PASSWORD not in proc.stdout + proc.stderr
    n_images = chat_server.state.n_ok
    assert n_images >= 6
    assert_no_password_under(tmp_path)
    conn = psycopg2.connect(postgres.url(instance_db))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE status = 'SUCCESS') FROM runs")
        n_runs, n_succeeded = cur.fetchone()
    conn.close()
    assert n_runs >= 3 and n_succeeded == n_runs
    conn = psycopg2.connect(journal_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM answers")
        assert cur.fetchone()[0] == 2 * n_images  # every demo image, by canny and by vllm
    conn.close()
    for database in (instance_db, "journal"):
        assert_no_password_in_database(postgres.url(database))
