"""Materializing the graph for chosen partitions on a given instance (used by the CLI).

Runs go through the named jobs of ``defs/jobs.py`` and carry ``defake/source=cli`` plus the
model and prompt, so the UI shows where each came from.
"""

from __future__ import annotations

import signal

import dagster as dg

from defake_pipeline.cli.bars import bars_in_this_process
from defake_pipeline.defs.automation import CLI_TAG
from defake_pipeline.defs.baselines import BaselinesConfig
from defake_pipeline.defs.manifests import DatasetSelection, ManifestConfig
from defake_pipeline.defs.partitions import (
    contiguous_runs,
    partition_key,
    range_tags,
    register_partitions,
    split_partition_key,
)
from defake_pipeline.defs.predictions import PredictionsConfig
from defake_pipeline.endpoints.registry import model_by_key
from defake_pipeline.errors import RunInterrupted
from defake_pipeline.evaluation.stopping import stop_signal
from defake_pipeline.warehouse.database import query

# Step-by-step DEBUG events belong in the UI; the terminal gets INFO and above.
_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _run_config(op: str | None, config: dg.Config | None) -> dg.RunConfig:
    """Quiet console logs, and the config of the asset that takes one."""
    ops = {op: config} if op and config is not None else {}
    return dg.RunConfig(ops=ops, loggers=_QUIET_CONSOLE["loggers"])


# The asset of each named job that takes a config (which datasets, which baselines).
_CONFIGURED_ASSET = {
    "refresh_manifests": "image_manifest",
    "evaluate": "predictions",
    "evaluate_baselines": "baseline_predictions",
}


def _execute(
    job_name: str,
    instance: dg.DagsterInstance,
    resources: dict | None,
    key: str | None = None,
    datasets: list[str] | None = None,
    tags: dict | None = None,
    config: dg.Config | None = None,
) -> dg.ExecuteInProcessResult:
    from defake_pipeline.definitions import defs

    job = defs.resolve_job_def(job_name)
    op = _CONFIGURED_ASSET.get(job_name)
    if config is None and op is not None:
        config = DatasetSelection(datasets=list(datasets or []))
    try:
        return job.execute_in_process(
            instance=instance,
            partition_key=key,
            run_config=_run_config(op, config),
            tags={**CLI_TAG, **(tags or {})},
            resources=resources,
        )
    except dg.DagsterExecutionInterruptedError:
        # Dagster has recorded the run as interrupted: the command says by which signal, in one line.
        raise RunInterrupted(stop_signal() or signal.SIGINT) from None


def _partition_tags(keys: list[str]) -> dict[str, str]:
    """The model and the prompt a run evaluates, each where it evaluates only one."""
    models = {split_partition_key(k)[0] for k in keys}
    prompts = {split_partition_key(k)[1] for k in keys}
    tags = {"defake/model": models.pop()} if len(models) == 1 else {}
    return tags | ({"defake/prompt": prompts.pop()} if len(prompts) == 1 else {})


def materialize_evaluation(
    instance: dg.DagsterInstance,
    models: list[str],
    prompts: list[str],
    resources: dict | None = None,
    datasets: list[str] | None = None,
    max_parallel: int = 1,
    rehash: bool = False,
    batch: bool = False,
) -> list[dg.ExecuteInProcessResult]:
    """Manifest, then the baselines among ``models`` (once: they read no prompt) and every other
    model × prompt partition, then the warehouse, reports and leaderboard.

    Each step is its own run of a named job, so all of them appear in the UI's run list. With
    ``max_parallel`` > 1, a run covers a range of prediction partitions, evaluated that many at
    once in this process (they share only the journal); otherwise each partition is a run. Either
    way their progress shows as one bar per partition on a terminal. With ``batch``, journal
    misses go through the Batch API; a partition waiting for its batches writes nothing yet.
    """
    baselines = [m for m in models if model_by_key(m).backend == "baseline"]
    models = [m for m in models if m not in baselines]
    register_partitions(instance, models, prompts if models else [])
    keys = [str(partition_key(m, p)) for m in models for p in prompts]
    runs = contiguous_runs(instance, keys) if max_parallel > 1 else [[k] for k in keys]
    rescan = ManifestConfig(datasets=list(datasets or []), rehash=rehash)
    chosen = PredictionsConfig(datasets=list(datasets or []), partitions_at_once=max_parallel, batch=batch)
    with bars_in_this_process():
        results = [_execute("refresh_manifests", instance, resources, config=rescan)]
        if baselines:
            wanted = BaselinesConfig(models=baselines, datasets=list(datasets or []))
            results.append(_execute("evaluate_baselines", instance, resources, config=wanted))
        for run in runs:
            tags = {**_partition_tags(run), **range_tags(run)} if len(run) > 1 else _partition_tags(run)
            key = None if len(run) > 1 else run[0]
            results.append(_execute("evaluate", instance, resources, key, tags=tags, config=chosen))
        results.append(_execute("publish", instance, resources))
    return results


def publish(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """The warehouse, reports and leaderboard rebuilt from the partitions the instance has."""
    with bars_in_this_process():
        return _execute("publish", instance, None)


def gate_failures(layout, pairs: list[tuple[str, str]]) -> list[str]:
    """One line per chosen partition that is not on the leaderboard, with the gate's reason."""
    gate = query(layout, "SELECT dataset, model, prompt, status, reason FROM partition_gate WHERE status <> 'passed'")
    wanted = set(pairs)
    return [
        f"{r.model}|{r.prompt} on {r.dataset}: quality gate {r.status}: {r.reason}"
        for r in gate.itertuples(index=False)
        if (r.model, r.prompt) in wanted
    ]
