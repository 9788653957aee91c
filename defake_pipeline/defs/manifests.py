"""The image manifest: every dataset under datasets/, probed and hashed, with data-quality checks."""

import dagster as dg

from defake_pipeline.datasets import quality
from defake_pipeline.datasets.fingerprints import dataset_fingerprint
from defake_pipeline.datasets.layouts import defined_datasets
from defake_pipeline.datasets.manifest import manifest_content_hash
from defake_pipeline.datasets.refresh import prune_manifests, refresh_manifest
from defake_pipeline.defs.resources import DefakeHomeFolder
from defake_pipeline.errors import DatasetError, DefakeError, NotMaterialized
from defake_pipeline.text import markdown_cell, markdown_code, markdown_table
from defake_pipeline.warehouse.parquet import read_manifests

_CHECKS = [
    # Failing, not blocking: a leak is worth fixing, but the other images still deserve answers.
    dg.AssetCheckSpec(
        "no_label_leak", asset="image_manifest", description="No image content appears both as real and as fake."
    ),
    dg.AssetCheckSpec(
        "readable_images",
        asset="image_manifest",
        description="Reports images that could not be read (they get error rows, never verdicts).",
    ),
    dg.AssetCheckSpec(
        "no_generator_metadata_on_real",
        asset="image_manifest",
        description="Warns where an image labelled real carries generator metadata or a sampler name.",
    ),
]
_LISTED = 20  # examples shown in a check's metadata


class DatasetSelection(dg.Config):
    """Restrict a run to some datasets (keys from datasets/); empty means every dataset."""

    datasets: list[str] = []


class ManifestConfig(DatasetSelection):
    """Which datasets to rescan, and whether to hash every file again."""

    rehash: bool = False
    """Hash every file, even one whose size and modification time are unchanged: a rescan
    trusts that pair, so a file replaced by another of the same size and timestamp (a copy
    that kept its times, a restored backup) is found only this way."""


def _examples(items) -> dg.MetadataValue:
    lines = [
        f"- {markdown_code(str(a))}" + (f": {markdown_cell(str(b))}" if b else "") for a, b in list(items)[:_LISTED]
    ]
    return dg.MetadataValue.md("\n".join(lines) or "none")


def manifest_checks(manifest, leaks) -> list[dg.AssetCheckResult]:
    bad = quality.unreadable(manifest)
    suspicious = quality.generator_metadata_on_real(manifest)
    return [
        dg.AssetCheckResult(
            check_name="no_label_leak",
            passed=leaks.empty,
            metadata={
                "n_images": len(leaks),
                "examples": _examples((f"{r.dataset}/{r.rel_path}", f"label {r.label}") for r in leaks.itertuples()),
            },
        ),
        dg.AssetCheckResult(
            check_name="readable_images",
            passed=bad.empty,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "n_unreadable": len(bad),
                "examples": _examples((f"{r.dataset}/{r.rel_path}", r.probe_error) for r in bad.itertuples()),
            },
        ),
        dg.AssetCheckResult(
            check_name="no_generator_metadata_on_real",
            passed=not suspicious,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"n_images": len(suspicious), "examples": _examples(suspicious)},
        ),
    ]


FINGERPRINTS = "fingerprints"


def refreshed_fingerprints(instance: dg.DagsterInstance) -> dict[str, str]:
    """``{dataset: fingerprint}`` the last manifest run refreshed, as the new-images sensor's
    first look: after a CLI run, images already in the manifests are not new."""
    event = instance.get_latest_materialization_event(image_manifest.key)
    entry = event.asset_materialization.metadata.get(FINGERPRINTS) if event and event.asset_materialization else None
    value = entry.value if entry is not None else None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@dg.asset(group_name="evaluation", kinds={"parquet"}, check_specs=_CHECKS)
def image_manifest(
    context: dg.AssetExecutionContext, config: ManifestConfig, store: DefakeHomeFolder
) -> dg.MaterializeResult:
    """One row per image of every dataset: label, subset, sha256, real format, size, probe error, provenance."""
    layout = store.layout()
    specs = defined_datasets()
    if not config.datasets:
        for gone in prune_manifests(layout, [s.key for s in specs]):
            context.log.info(f"dataset {gone} is no longer defined; its manifest was removed")
    summaries = []
    not_refreshed: dict[str, str] = {}  # dataset -> why
    # What each manifest was refreshed from, taken before the scan: an image that lands during
    # it makes the next look differ, and the new-images sensor runs for it.
    fingerprints: dict[str, str] = {}
    for spec in specs:
        if config.datasets and spec.key not in config.datasets:
            continue
        try:
            fingerprint: str | None = dataset_fingerprint(spec)
        except (OSError, DefakeError):  # the refresh below names the cause; the sensor looks again
            fingerprint = None
        try:
            summary = refresh_manifest(layout, spec, rehash=config.rehash)
        except DatasetError as exc:
            # A dataset that cannot be listed (its CSV a pipe, its root gone) is named and keeps
            # its last manifest; the others are refreshed and evaluated all the same.
            context.log.error(f"dataset {spec.key}: not refreshed: {exc}")
            not_refreshed[spec.key] = str(exc)
            continue
        if fingerprint:
            fingerprints[spec.key] = fingerprint
        context.log.info(f"dataset {summary.dataset}: {summary.n_images} images ({summary.n_probe_errors} unreadable)")
        for note in summary.notes:
            context.log.warning(f"dataset {summary.dataset}: {note}")
        summaries.append(summary)
    table = markdown_table(
        ["dataset", "images", "real", "fake", "unreadable"],
        [[s.dataset, s.n_images, s.n_real, s.n_fake, s.n_probe_errors] for s in summaries],
        align="lrrrr",
    )
    try:
        manifest = read_manifests(layout)
    except NotMaterialized:
        if not not_refreshed:
            raise
        # Not "materialize the manifest first": that is what just failed, for this reason.
        more = f" (+{len(not_refreshed) - 1} more in the run's log)" if len(not_refreshed) > 1 else ""
        raise DatasetError(f"no dataset could be read: {next(iter(not_refreshed.values()))}{more}") from None
    # The check fails in the UI; a run on the terminal says it too, as the figures count such an
    # image under both labels.
    leaks = quality.label_leaks(manifest)
    for dataset, leaked in leaks.groupby("dataset"):
        context.log.warning(
            f"dataset {dataset}: {leaked['sha256'].nunique()} image(s) labelled both real and fake, such as "
            f"{leaked['rel_path'].iloc[0]}; the no_label_leak check fails and the figures count each under both"
        )
    return dg.MaterializeResult(
        # Downstream predictions run only when this changes (see defs/automation.py).
        data_version=dg.DataVersion(manifest_content_hash(manifest)),
        metadata={
            "n_images": len(manifest),
            "n_probe_errors": int(manifest["probe_error"].notna().sum()),
            "refreshed": dg.MetadataValue.md(table),
            "not_refreshed": ", ".join(not_refreshed) or "none",
            FINGERPRINTS: dg.MetadataValue.json(fingerprints),
            "path": dg.MetadataValue.path(str(layout.manifests_dir)),
        },
        check_results=manifest_checks(manifest, leaks),
    )
