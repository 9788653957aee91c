"""The single-machine default needs none of the scaled deployment's packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, project_dagster_home

MLLMDF = str(Path(sys.executable).with_name("mllmdf"))
# What the `scale` extra brings (and moto, for tests): importing any of them fails here.
SCALE_MODULES = ("s3fs", "aiobotocore", "psycopg2", "dagster_postgres", "moto", "boto3")

BLOCKER = f"""
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {[m.split(".")[0] for m in SCALE_MODULES]!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not part of the default install)")
        return None

sys.meta_path.insert(0, _Absent())
"""


def test_the_demo_runs_without_the_scale_packages(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFAKE_", "AWS_", "DAGSTER_POSTGRES"))}
    env.update(
        PYTHONPATH=str(tmp_path / "site"),
        DEFAKE_HOME=str(tmp_path / "home"),
        DAGSTER_HOME=str(project_dagster_home(tmp_path)),
    )
    check = subprocess.run([sys.executable, "-c", "import s3fs"], env=env, capture_output=True, text=True)
    assert "blocked" in check.stderr, "the blocker is not in effect"
    proc = subprocess.run(
        [MLLMDF, "materialize", "--model", "canny", "--prompt", "simple"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "home" / "reports" / "leaderboard.md").is_file()
    assert "blocked" not in proc.stderr
