"""A writer killed mid-write leaves its temporary file; the next write of the same file removes
it, and never the file of a writer still at work."""

import os
import signal
import subprocess
import sys

from defake_pipeline.datasets.layouts import get_dataset
from defake_pipeline.datasets.refresh import refresh_manifest
from defake_pipeline.warehouse.database import rebuild_warehouse
from defake_pipeline.warehouse.files import temporary_beside
from defake_pipeline.warehouse.layout import HomeLayout

KILLED_WRITER = """
import os, sys
from pathlib import Path
from defake_pipeline.warehouse.files import temporary_beside
tmp = temporary_beside(Path(sys.argv[1]), ".duckdb.tmp")
tmp.write_bytes(b"x" * 17_000_000)
print(tmp, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_rebuild_removes_what_killed_rebuilds_left_and_spares_a_live_one(defake_home):
    layout = HomeLayout(defake_home)
    refresh_manifest(layout, get_dataset("demo"))
    left = []
    for _ in range(8):
        proc = subprocess.run(
            [sys.executable, "-c", KILLED_WRITER, str(layout.warehouse)], capture_output=True, text=True
        )
        assert proc.returncode == -signal.SIGKILL
        left.append(proc.stdout.strip())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        made = temporary_beside(layout.warehouse, ".duckdb.tmp")  # as the live process would name it
        live_tmp = made.rename(made.with_name(made.name.replace(f"-{os.getpid()}-", f"-{live.pid}-")))
        own_tmp = temporary_beside(layout.warehouse, ".duckdb.tmp")  # this process is alive too
        rebuild_warehouse(layout)
        leftovers = sorted(p.name for p in layout.warehouse.parent.glob(".*.duckdb.tmp*"))
        assert leftovers == sorted([live_tmp.name, own_tmp.name])
    finally:
        live.kill()
        live.wait()


def test_every_file_written_is_as_readable_as_the_umask_lets_any_file_be(tmp_path, monkeypatch):
    """Files written under a temporary name and renamed (the manifests, predictions, the results
    section) were 0600, as mkstemp makes them: a web server or a teammate reading the reports
    folder could read the reports but not paper.md beside them."""
    from click.testing import CliRunner

    from conftest import demo_dataset, project_dagster_home
    from defake_pipeline.cli import main

    demo_dataset(tmp_path)
    (tmp_path / "models.toml").write_text('registered = ["canny"]\n')
    monkeypatch.chdir(tmp_path)
    env = {"DEFAKE_HOME": str(tmp_path / "out"), "DAGSTER_HOME": str(project_dagster_home(tmp_path))}
    before = os.umask(0o022)
    try:
        for command in (["materialize"], ["paper"]):
            assert CliRunner().invoke(main, command, env=env).exit_code == 0
    finally:
        os.umask(before)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(written) > 10 and {p.name for p in written} >= {"paper.md", "demo.parquet"}
    assert [str(p) for p in written if p.stat().st_mode & 0o777 != 0o644] == []
