"""Materializing the graph for chosen partitions, in process, on a given instance (used by the CLI)."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import dagster as dg

from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.metrics import metrics
from defake_pipeline.defs.partitions import partition_key, register_partitions
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.reports import leaderboard, model_report
from defake_pipeline.defs.resources import default_resources


# Step-by-step DEBUG events belong in the UI; the terminal gets INFO and above.
_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _run_config(assets: list, datasets: list[str] | None) -> dict:
    """Quiet console logs, and the dataset selection for the assets that take one."""
    selection = {"config": {"datasets": list(datasets or [])}}
    ops = {a.key.to_python_identifier(): selection for a in assets if a in (image_manifest, predictions)}
    return {**_QUIET_CONSOLE, "ops": ops}


def materialize_evaluation(
    instance: dg.DagsterInstance,
    models: list[str],
    prompts: list[str],
    resources: dict | None = None,
    datasets: list[str] | None = None,
    max_parallel: int = 1,
) -> list[dg.ExecuteInProcessResult]:
    """Manifest, then every model × prompt partition, then the warehouse, reports and leaderboard.

    Each step is its own run, so all of them appear in the UI's run list and asset history.
    With ``max_parallel`` > 1 on a persistent instance, prediction partitions run in that
    many processes at once (they share only the journal, which takes concurrent writers).
    """
    register_partitions(instance, models, prompts)
    resources = {**default_resources(), **(resources or {})}
    keys = [partition_key(m, p) for m in models for p in prompts]

    def run(assets, key=None):
        return dg.materialize(
            assets, instance=instance, resources=resources, partition_key=key, run_config=_run_config(assets, datasets)
        )

    results = [run([image_manifest])]
    if max_parallel > 1 and len(keys) > 1 and not instance.is_ephemeral:
        _run_partitions_in_processes(keys, datasets or [], max_parallel)
    else:
        results += [run([predictions], key) for key in keys]
    results.append(run([metrics, leaderboard]))
    results += [run([model_report], key) for key in keys]
    return results


def _materialize_partition(key: str, datasets: list[str]) -> str:
    """One predictions partition in a worker process, on the DAGSTER_HOME instance."""
    instance = dg.DagsterInstance.get()
    config = _run_config([predictions], datasets)
    dg.materialize([predictions], instance=instance, resources=default_resources(), partition_key=key, run_config=config)
    return key


def _run_partitions_in_processes(keys: list[dg.MultiPartitionKey], datasets: list[str], max_parallel: int) -> None:
    # spawn, not fork: the parent holds Dagster and DuckDB state that must not be shared.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max_parallel, mp_context=context) as pool:
        for future in [pool.submit(_materialize_partition, str(k), datasets) for k in keys]:
            future.result()
