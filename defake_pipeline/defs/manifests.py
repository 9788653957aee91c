"""The image manifest: every dataset under datasets/, probed and hashed."""

import dagster as dg

from defake_pipeline.core.datasets import dataset_specs
from defake_pipeline.core.pipeline import prune_manifests, refresh_manifest
from defake_pipeline.defs.resources import DefakeStore


class DatasetSelection(dg.Config):
    """Restrict a run to some datasets (keys from datasets/); empty means every dataset."""

    datasets: list[str] = []


@dg.asset(group_name="evaluation", kinds={"parquet"})
def image_manifest(
    context: dg.AssetExecutionContext, config: DatasetSelection, store: DefakeStore
) -> dg.MaterializeResult:
    """One row per image of every dataset: label, subset, sha256, real format, size, probe error, provenance."""
    layout = store.layout()
    specs = dataset_specs()
    if not config.datasets:
        for gone in prune_manifests(layout, [s.key for s in specs]):
            context.log.info(f"dataset {gone} is no longer defined; its manifest was removed")
    summaries = []
    for spec in specs:
        if config.datasets and spec.key not in config.datasets:
            continue
        summary = refresh_manifest(layout, spec)
        context.log.info(f"dataset {summary.dataset}: {summary.n_images} images ({summary.n_probe_errors} unreadable)")
        summaries.append(summary)
    table = "\n".join(
        f"| {s.dataset} | {s.n_images} | {s.n_real} | {s.n_fake} | {s.n_probe_errors} |" for s in summaries
    )
    return dg.MaterializeResult(
        metadata={
            "n_images": sum(s.n_images for s in summaries),
            "n_probe_errors": sum(s.n_probe_errors for s in summaries),
            "datasets": dg.MetadataValue.md(
                "| dataset | images | real | fake | unreadable |\n| --- | ---: | ---: | ---: | ---: |\n" + table
            ),
            "path": dg.MetadataValue.path(str(layout.manifests_dir)),
        }
    )
