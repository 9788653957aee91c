"""Materializing the graph for chosen partitions on a given instance (used by the CLI).

Runs go through the named jobs of ``defs/jobs.py`` and carry ``defake/source=cli`` plus the
model and prompt, so the UI shows where each came from.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import dagster as dg

from defake_pipeline.core.store import query
from defake_pipeline.defs.partitions import partition_key, register_partitions

# Step-by-step DEBUG events belong in the UI; the terminal gets INFO and above.
_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
CLI_TAGS = {"defake/source": "cli"}


def _run_config(op: str | None, datasets: list[str] | None) -> dict:
    """Quiet console logs, and the dataset selection for the asset that takes one."""
    ops = {op: {"config": {"datasets": list(datasets or [])}}} if op else {}
    return {**_QUIET_CONSOLE, "ops": ops}


def _execute(job_name: str, instance: dg.DagsterInstance, resources: dict | None, key: str | None = None,
             datasets: list[str] | None = None, tags: dict | None = None) -> dg.ExecuteInProcessResult:  # fmt: skip
    from defake_pipeline.definitions import defs

    job = defs.resolve_job_def(job_name)
    op = {"refresh_manifests": "image_manifest", "evaluate": "predictions"}.get(job_name)
    return job.execute_in_process(
        instance=instance,
        partition_key=key,
        run_config=_run_config(op, datasets),
        tags={**CLI_TAGS, **(tags or {})},
        resources=resources,
    )


def _partition_tags(key: dg.MultiPartitionKey) -> dict[str, str]:
    dims = key.keys_by_dimension
    return {"defake/model": dims["model"], "defake/prompt": dims["prompt"]}


def materialize_evaluation(
    instance: dg.DagsterInstance,
    models: list[str],
    prompts: list[str],
    resources: dict | None = None,
    datasets: list[str] | None = None,
    max_parallel: int = 1,
) -> list[dg.ExecuteInProcessResult]:
    """Manifest, then every model × prompt partition, then the warehouse, reports and leaderboard.

    Each step is its own run of a named job, so all of them appear in the UI's run list. With
    ``max_parallel`` > 1 on a persistent instance, prediction partitions run in that many
    processes at once (they share only the journal, which takes concurrent writers).
    """
    register_partitions(instance, models, prompts)
    keys = [partition_key(m, p) for m in models for p in prompts]
    results = [_execute("refresh_manifests", instance, resources, datasets=datasets)]
    if max_parallel > 1 and len(keys) > 1 and not instance.is_ephemeral and not resources:
        _run_partitions_in_processes(keys, datasets or [], max_parallel)
    else:
        results += [_execute("evaluate", instance, resources, k, datasets, _partition_tags(k)) for k in keys]
    results.append(_execute("publish", instance, resources))
    return results


def _evaluate_in_worker(key: str, datasets: list[str]) -> str:
    """One predictions partition in a worker process, on the DAGSTER_HOME instance."""
    from defake_pipeline.defs.partitions import model_prompt_partitions

    multi_key = model_prompt_partitions.get_partition_key_from_str(key)
    _execute("evaluate", dg.DagsterInstance.get(), None, key, datasets, _partition_tags(multi_key))  # type: ignore[arg-type]
    return key


def _run_partitions_in_processes(keys: list[dg.MultiPartitionKey], datasets: list[str], max_parallel: int) -> None:
    # spawn, not fork: the parent holds Dagster and DuckDB state that must not be shared.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max_parallel, mp_context=context) as pool:
        for future in [pool.submit(_evaluate_in_worker, str(k), datasets) for k in keys]:
            future.result()


def gate_failures(layout, pairs: list[tuple[str, str]]) -> list[str]:
    """One line per chosen partition that is not on the leaderboard, with the gate's reason."""
    gate = query(layout, "SELECT model, prompt, status, reason FROM partition_gate WHERE status <> 'passed'")
    wanted = set(pairs)
    return [
        f"{r.model}|{r.prompt}: quality gate {r.status}: {r.reason}"
        for r in gate.itertuples(index=False)
        if (r.model, r.prompt) in wanted
    ]
