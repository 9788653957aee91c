"""The local Dagster instance the CLI runs on (DAGSTER_HOME), set up with the project's settings."""

import os
import shutil
from pathlib import Path

import dagster as dg

from defake_pipeline.core.paths import PACKAGE_ROOT

INSTANCE_TEMPLATE = PACKAGE_ROOT / "instance" / "dagster.yaml"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to ./.dagster_home, with the project's dagster.yaml in place."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and INSTANCE_TEMPLATE.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def local_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()
