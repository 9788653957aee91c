"""Sensors that keep the evaluation current: new images, new or changed prompts, new models.

Cursors record what was last seen (fingerprints, content hashes); run keys are derived
from that content, so a reset cursor re-requests exactly the runs Dagster has not yet
launched, and nothing is dropped silently.
"""

import json

import dagster as dg

from defake_pipeline.core.datasets import dataset_specs
from defake_pipeline.core.errors import DefakeError
from defake_pipeline.core.models import get_model, registered_models
from defake_pipeline.core.scan import dataset_fingerprint, scan_prompts
from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.partitions import model_partitions, partition_key, prompt_partitions
from defake_pipeline.defs.predictions import predictions

RUNNING = dg.DefaultSensorStatus.RUNNING


def _predictions_request(model: str, prompt: str, run_key: str, reason: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        partition_key=partition_key(model, prompt),
        asset_selection=[predictions.key],
        tags={"defake/trigger": reason},
    )


@dg.sensor(target=[image_manifest], minimum_interval_seconds=60, default_status=RUNNING)
def new_images_sensor(context: dg.SensorEvaluationContext):
    """Refresh a dataset's manifest when its images are added, changed or removed.

    Once the manifest has materialized, ``predictions_after_manifest_sensor`` asks every
    registered model × prompt again; the journal makes those runs pay only for new images.
    """
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    changed: dict[str, str] = {}
    for spec in dataset_specs():
        try:
            fingerprint = dataset_fingerprint(spec)
        except (OSError, DefakeError) as exc:
            context.log.warning(f"dataset {spec.key}: not scanned ({exc})")
            continue
        if seen.get(spec.key) != fingerprint:
            changed[spec.key] = fingerprint
    if not changed:
        return dg.SkipReason(f"no images added, changed or removed in {len(seen)} dataset(s)")
    requests = [
        dg.RunRequest(
            run_key=f"manifest:{dataset}:{fingerprint}",
            asset_selection=[image_manifest.key],
            run_config={"ops": {"image_manifest": {"config": {"datasets": [dataset]}}}},
            tags={"defake/trigger": "new_images", "defake/dataset": dataset},
        )
        for dataset, fingerprint in changed.items()
    ]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({**seen, **changed}, sort_keys=True))


def _latest_manifest_storage_id(instance: dg.DagsterInstance) -> int | None:
    records = instance.fetch_materializations(image_manifest.key, limit=1).records
    return records[0].storage_id if records else None


@dg.sensor(target=[predictions], minimum_interval_seconds=30, default_status=RUNNING)
def predictions_after_manifest_sensor(context: dg.SensorEvaluationContext):
    """After each manifest materialization, re-evaluate every registered model × prompt."""
    latest = _latest_manifest_storage_id(context.instance)
    done = int(context.cursor) if context.cursor else -1
    if latest is None or latest <= done:
        return dg.SkipReason("no new manifest materialization")
    models = context.instance.get_dynamic_partitions(model_partitions.name)
    prompts = context.instance.get_dynamic_partitions(prompt_partitions.name)
    requests = [
        _predictions_request(m, p, f"after-manifest:{latest}:{m}|{p}", "manifest_updated") for m in models for p in prompts
    ]
    return dg.SensorResult(run_requests=requests, cursor=str(latest))


@dg.sensor(target=[predictions], minimum_interval_seconds=30, default_status=RUNNING)
def prompt_files_sensor(context: dg.SensorEvaluationContext):
    """A new prompt file gets a partition and a run per model; a changed one, runs for itself only."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    scan = scan_prompts()
    for file, error in scan.invalid.items():
        context.log.warning(f"skipped invalid prompt {file}: {error}")
    new = sorted(k for k in scan.valid if k not in seen)
    changed = sorted(k for k in scan.valid if k in seen and seen[k] != scan.valid[k])
    models = context.instance.get_dynamic_partitions(model_partitions.name)
    requests = [
        _predictions_request(m, p, f"prompt:{p}:{scan.valid[p]}:{m}", "new_prompt" if p in new else "changed_prompt")
        for p in new + changed
        for m in models
    ]
    if not new and not changed:
        reason = "no prompt added or changed"
        if scan.invalid:
            reason += "; skipped invalid: " + "; ".join(scan.invalid.values())
        return dg.SkipReason(reason)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[prompt_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps({**seen, **scan.valid}, sort_keys=True),
    )


@dg.sensor(target=[predictions], minimum_interval_seconds=60, default_status=RUNNING)
def model_registry_sensor(context: dg.SensorEvaluationContext):
    """A model newly listed in models.toml gets a partition and a run per prompt."""
    try:
        wanted = [get_model(name).key for name in registered_models()]
    except DefakeError as exc:
        return dg.SkipReason(f"models.toml not usable: {exc}")
    existing = set(context.instance.get_dynamic_partitions(model_partitions.name))
    new = [m for m in dict.fromkeys(wanted) if m not in existing]
    if not new:
        return dg.SkipReason(f"no new model among {len(wanted)} registered")
    prompts = context.instance.get_dynamic_partitions(prompt_partitions.name)
    requests = [_predictions_request(m, p, f"model:{m}:{p}", "new_model") for m in new for p in prompts]
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=[model_partitions.build_add_request(new)])
