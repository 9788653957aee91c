"""The local Dagster instance the CLI runs on (DAGSTER_HOME), set up with the project's settings."""

import os
import shutil
from pathlib import Path

import dagster as dg

from defake_pipeline.defs.metrics import DUCKDB_WRITER_POOL
from defake_pipeline.settings import PACKAGE_ROOT, load_settings

INSTANCE_TEMPLATE = PACKAGE_ROOT / "instance" / "dagster.yaml"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to the project root's .dagster_home, with the project's dagster.yaml in place."""
    home = load_settings().DAGSTER_HOME.absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and INSTANCE_TEMPLATE.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


# Pools the project uses, with their limits: DuckDB allows one writer per file.
POOL_LIMITS = {DUCKDB_WRITER_POOL: 1}


# The CLI's runs keep no copy of their steps' raw stdout and stderr. Capturing it starts a
# `tail` and a watcher process per stream and step, in the command's process group: Ctrl-C
# reaches them too, and each watcher prints a KeyboardInterrupt traceback over the command's one
# line. Everything the steps report is in the run's event log all the same, and on the terminal.
_NO_COMPUTE_LOGS = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


def local_instance() -> dg.DagsterInstance:
    # DagsterInstance.get() takes no overrides; the instance reference it builds does.
    from dagster._core.instance.ref import InstanceRef

    home = ensure_dagster_home()
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides=_NO_COMPUTE_LOGS))
    set_pool_limits(instance)
    return instance


def set_pool_limits(instance: dg.DagsterInstance) -> None:
    """Give each of the project's pools its limit (what `dagster instance concurrency set` does)."""
    for pool, limit in POOL_LIMITS.items():
        if instance.event_log_storage.get_concurrency_info(pool).slot_count != limit:
            instance.event_log_storage.set_concurrency_slots(pool, limit)
