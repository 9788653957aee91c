"""Materializing the graph for chosen partitions, in process, on a given instance (used by the CLI)."""

import dagster as dg

from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.metrics import metrics
from defake_pipeline.defs.partitions import partition_key, register_partitions
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.reports import leaderboard, model_report
from defake_pipeline.defs.resources import default_resources


# Step-by-step DEBUG events belong in the UI; the terminal gets INFO and above.
_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def materialize_evaluation(
    instance: dg.DagsterInstance,
    models: list[str],
    prompts: list[str],
    resources: dict | None = None,
    datasets: list[str] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """Manifest, then every model × prompt partition, then the warehouse, reports and leaderboard.

    Each step is its own run, so all of them appear in the UI's run list and asset history.
    """
    register_partitions(instance, models, prompts)
    resources = {**default_resources(), **(resources or {})}
    keys = [partition_key(m, p) for m in models for p in prompts]

    selection = {"config": {"datasets": list(datasets or [])}}

    def run(assets, key=None):
        ops = {a.key.to_python_identifier(): selection for a in assets if a in (image_manifest, predictions)}
        return dg.materialize(
            assets, instance=instance, resources=resources, partition_key=key, run_config={**_QUIET_CONSOLE, "ops": ops}
        )

    results = [run([image_manifest])]
    results += [run([predictions], key) for key in keys]
    results.append(run([metrics, leaderboard]))
    results += [run([model_report], key) for key in keys]
    return results
