"""DEFAKE_HOME on a real S3-compatible server: every file lands there, nothing on the worker's
disk, the warehouse equals the one built on local disk, and the secret key shows nowhere."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd

from conftest import PLANTED_PASSWORD, REPO, assert_no_password_under, project_dagster_home, real_fake_dataset

MLLMDF = str(Path(sys.executable).with_name("mllmdf"))
TABLES = ("image_manifest", "predictions", "partition_gate", "metrics", "comparisons")
# What differs between two runs over the same answers: when each row was written, and whether
# this run paid for its answer or found it in the journal.
RUN_COLUMNS = {"predictions": " EXCLUDE (created_at, n_requests)"}


def _worker(tmp_path: Path, name: str, s3, journal_url: str, chat_server, home: str) -> tuple[Path, dict]:
    """An empty folder with its own HOME and TMPDIR, and the environment of a worker there."""
    folder = tmp_path / name
    (folder / "tmp").mkdir(parents=True)
    (tmp_path / f"{name}-instance").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(
        s3.env,
        HOME=str(folder),
        TMPDIR=str(folder / "tmp"),
        DEFAKE_HOME=home,
        DEFAKE_JOURNAL_URL=journal_url,
        BASE_URL=chat_server.base_url,
        DAGSTER_HOME=str(project_dagster_home(tmp_path / f"{name}-instance")),
    )
    return folder, env


def _run(args: list[str], folder: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([MLLMDF, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert PLANTED_PASSWORD not in proc.stdout + proc.stderr
    return proc


def _tables(database: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(database), read_only=True) as con:
        return {
            t: sorted(con.execute(f"SELECT *{RUN_COLUMNS.get(t, '')} FROM {t}").fetchall(), key=repr) for t in TABLES
        }


def test_a_home_on_object_storage_holds_every_file_and_the_same_warehouse(tmp_path, s3, postgres, chat_server):
    journal_url = postgres.create_database("store_journal")
    args = ["materialize", "--model", "canny", "--model", "vllm", "--prompt", "simple"]
    folder, env = _worker(tmp_path, "a", s3, journal_url, chat_server, s3.url("home"))
    _run(args, folder, env)
    asked = chat_server.state.n_ok
    assert asked >= 6
    stored = {p.removeprefix(f"{s3.bucket}/home/") for p in s3.fs.find(s3.url("home"))}
    expected = {"defake.duckdb", "manifests/demo.parquet", "predictions/model=vllm/prompt=simple.parquet"}
    expected |= {"reports/leaderboard.md", "reports/vllm__simple.md", "reports/vllm__simple.csv"}
    assert expected <= stored
    assert any(p.startswith("reports/thumbs/") for p in stored)
    # Nothing of the run stays on the worker's disk but its logs.
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert all(p.startswith("defake-logs/") for p in left), left
    rows = list(csv.DictReader(io.StringIO(s3.fs.cat(s3.url("home", "reports", "vllm__simple.csv")).decode())))
    assert len(rows) == asked

    # The same answers (from the journal) in a local home build the same warehouse.
    local_folder, local_env = _worker(tmp_path, "b", s3, journal_url, chat_server, str(tmp_path / "local-home"))
    _run(args, local_folder, local_env)
    assert chat_server.state.n_ok == asked, "the local run asked again for answers in the journal"
    s3.fs.get_file(s3.url("home", "defake.duckdb"), str(tmp_path / "remote.duckdb"))
    remote, local = _tables(tmp_path / "remote.duckdb"), _tables(tmp_path / "local-home" / "defake.duckdb")
    for table in TABLES:
        assert remote[table] == local[table], table
    assert_no_password_under(tmp_path)
    for key in s3.fs.find(s3.url()):
        assert PLANTED_PASSWORD.encode() not in s3.fs.cat(key), key


def test_infer_writes_its_csv_to_object_storage_and_continues_it(tmp_path, s3, postgres, chat_server):
    journal_url = postgres.create_database("infer_journal")
    folder, env = _worker(tmp_path, "w", s3, journal_url, chat_server, s3.url("seed"))
    demo = REPO / "demo"
    args = ["infer", "-m", "vllm", "-c", "3", "--real_dir", str(demo / "real"), "--fake_dir", str(demo / "fake")]
    _run([*args, "-o", "run"], folder, env)
    assert chat_server.state.n_ok == 6
    first = s3.fs.cat(s3.url("seed", "run.csv")).decode()
    assert len(list(csv.DictReader(io.StringIO(first)))) == 6
    out = _run([*args, "-c", "0", "-o", "run", "--continue"], folder, env)
    rows = list(csv.DictReader(io.StringIO(s3.fs.cat(s3.url("seed", "run.csv")).decode())))
    assert len(rows) == len({r["path"] for r in rows}) == chat_server.state.n_ok
    assert "accuracy" in out.stderr
    left = [p for p in folder.rglob("*") if p.is_file() and not p.is_relative_to(folder / "defake-logs")]
    assert not left, left


def test_a_dataset_on_object_storage_is_read_from_there(tmp_path, s3, postgres, chat_server):
    """Workers need no copy of the images: the dataset's root is a URL."""
    local = real_fake_dataset(tmp_path / "upload", "remote", 6)
    for file in sorted(local.rglob("*.png")):
        s3.fs.put_file(str(file), s3.url("images", *file.relative_to(local).parts))
    project = tmp_path / "project"
    (project / "datasets").mkdir(parents=True)
    (project / "datasets" / "remote.toml").write_text(f'layout = "real_fake"\nroot = "{s3.url("images")}"\n')
    (project / "models.toml").write_text('registered = ["vllm"]\n')
    folder, env = _worker(tmp_path, "w", s3, postgres.create_database("remote_journal"), chat_server, s3.url("r"))
    env["DEFAKE_PROJECT"] = str(project)
    _run(["materialize", "--model", "vllm", "--prompt", "simple", "--dataset", "remote"], folder, env)
    manifest = pd.read_parquet(io.BytesIO(s3.fs.cat(s3.url("r", "manifests", "remote.parquet"))))
    assert len(manifest) == 12 and manifest["path"].str.startswith(s3.url("images") + "/").all()
    assert manifest["probe_error"].isna().all() and manifest["sha256"].nunique() == 12
    assert chat_server.state.n_ok == 12
    predictions = pd.read_parquet(
        io.BytesIO(s3.fs.cat(s3.url("r", "predictions", "model=vllm", "prompt=simple.parquet")))
    )
    assert sorted(predictions["path"]) == sorted(manifest["path"]) and predictions["error"].isna().all()
    assert s3.fs.exists(s3.url("r", "reports", "vllm__simple.md"))
    left = [p for p in folder.rglob("*") if p.is_file() and not p.is_relative_to(folder / "defake-logs")]
    assert not left, left


def test_a_file_another_run_replaced_after_this_one_listed_it_is_read_whole(s3, monkeypatch):
    """Two runs of one partition: this one lists the predictions, the other then replaces a file
    with a larger one. Reads by ranges against the size listed would mix the two objects."""
    from defake_pipeline.storage import sorted_glob, stored_path
    from defake_pipeline.warehouse.parquet import read_parquet_frame, unreadable_parquet

    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    folder = stored_path(s3.url("race"))
    small = pd.DataFrame({"path": [f"s{i}" for i in range(3)]})
    large = pd.DataFrame({"path": [f"a much longer name, number {i}" for i in range(5000)]})
    s3.fs.pipe(s3.url("race", "p.parquet"), small.to_parquet(index=False))
    [listed] = sorted_glob(folder, "*.parquet")
    s3.fs.pipe(s3.url("race", "p.parquet"), large.to_parquet(index=False))  # the other run's PUT
    assert unreadable_parquet(listed) is None
    assert read_parquet_frame(listed)["path"].tolist() == large["path"].tolist()


def test_a_home_whose_store_or_bucket_is_not_there_is_one_line(tmp_path, s3, postgres, chat_server):
    """A misspelt bucket, a store nothing answers for, or a scheme other than s3://: the command
    ends on one line naming the home and the cause, with no SDK traceback."""
    journal_url = postgres.create_database("missing_store_journal")
    folder, env = _worker(tmp_path, "w", s3, journal_url, chat_server, "s3://no-such-bucket/home")
    real_fake_dataset(folder, "d", 2)
    nothing_there = {**env, "DEFAKE_HOME": s3.url("home"), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    nothing_there["AWS_MAX_ATTEMPTS"] = "1"  # botocore's retries would take about 14 s
    cases = [
        (env, "error: s3://no-such-bucket/home: the object store has no bucket 'no-such-bucket'"),
        (nothing_there, f"error: {s3.url('home')}: cannot reach bucket '{s3.bucket}' (Could not connect"),
        ({**env, "DEFAKE_HOME": "ftp://host/home"}, "error: ftp://host/home: neither a folder nor an s3:// URL"),
        (  # s3fs takes no keys from the URL: "key:secret@bucket" would be asked for as a bucket's name
            {**env, "DEFAKE_HOME": f"s3://AKIAPLANTED:{PLANTED_PASSWORD}@{s3.bucket}/home"},
            f"error: s3://{s3.bucket}/home: keys inside an s3:// URL are not used; set AWS_ACCESS_KEY_ID",
        ),
    ]
    for case_env, line in cases:
        proc = subprocess.run(
            [MLLMDF, "materialize", "-m", "canny"],
            cwd=folder,
            env=case_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr
        assert "Traceback" not in proc.stderr and PLANTED_PASSWORD not in proc.stdout + proc.stderr
