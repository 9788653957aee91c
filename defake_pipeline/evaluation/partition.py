"""One model × prompt partition evaluated over the manifest and written as Parquet."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from defake_pipeline.datasets.manifest import (
    job_keys,
    jobs_from_manifest,
)
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.evaluation.progress import ProgressLines
from defake_pipeline.evaluation.run import evaluate_jobs
from defake_pipeline.evaluation.stopping import run_stoppable, stoppable
from defake_pipeline.evaluation.tally import Tally
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import NO_PROMPT, Prediction
from defake_pipeline.storage import StoredPath
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.parquet import (
    PredictionWriter,
    read_manifests,
    read_parquet_frame,
    unreadable_parquet,
)


@dataclass
class PartitionSummary(Tally):
    """A partition run's totals, and where its predictions were written."""

    model: str = ""
    prompt: str = ""
    path: StoredPath | None = None
    note: str = ""  # something the run did that the user should hear of
    waiting: int = 0  # batch mode: images waiting for a batch; nothing was written
    batches: list[str] = field(default_factory=list)  # batch mode: the batches this run started


def prompt_key_of(spec: ModelSpec, prompt: LoadedPrompt | None) -> str:
    """The prompt key a model's predictions are stored under: a baseline reads no prompt."""
    return NO_PROMPT if spec.backend == "baseline" or prompt is None else prompt.key


async def evaluate_partition_async(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt | None,
    api_key: str | None = None,
    datasets: list[str] | None = None,
    max_cost_usd: float | None = None,
    on_result: Callable[[Prediction], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    batch: bool = False,
) -> PartitionSummary:
    """Evaluate manifest images with one model × prompt and write the partition's Parquet file
    (a baseline's, under ``NO_PROMPT``, whatever the prompt). ``on_progress`` gets a line at
    least every 10 s and every 5% of the images (see ``progress.py``).

    With ``datasets``, only their images are evaluated; the partition keeps its earlier rows
    for images of other datasets that are still in the manifest.

    In batch mode (``batch``, or the model's entry), a partition with images waiting for a
    batch writes nothing: its file stays as it was until every answer is journaled.
    """
    manifest = read_manifests(layout)
    prompt_key = prompt_key_of(spec, prompt)
    target = layout.predictions_file(spec.key, prompt_key)
    if datasets and target.exists() and (why := unreadable_parquet(target)):
        # Its rows for other datasets cannot be kept: every dataset is evaluated again,
        # which the journal answers without a request for everything asked before.
        summary_note = f"{why}: rebuilt for every dataset from the journal"
        datasets = None
    else:
        summary_note = ""
    chosen = manifest[manifest["dataset"].isin(datasets)] if datasets else manifest
    summary = PartitionSummary(model=spec.key, prompt=prompt_key, path=target, note=summary_note)
    writer = PredictionWriter(target)
    progress = ProgressLines(f"{spec.key}|{prompt_key}", len(job_keys(chosen)))

    def record(pred: Prediction) -> None:
        writer.add(pred.as_row())
        summary.add(pred)
        if on_result:
            on_result(pred)
        if on_progress and (line := progress.add(pred)):
            on_progress(line)

    try:
        jobs = jobs_from_manifest(chosen)
        outcome = await evaluate_jobs(
            layout,
            spec,
            prompt,
            jobs,
            record,
            api_key=api_key,
            max_cost_usd=max_cost_usd,
            batch=batch,
            partition_key=f"{spec.key}|{prompt_key}",
        )
        summary.note = "; ".join(filter(None, [summary.note, *outcome.notices]))
        summary.waiting, summary.batches = outcome.waiting, outcome.batches
        if outcome.waiting:
            writer.discard()
            return summary
        if datasets and target.exists():
            # Earlier rows for images of other datasets stay, while those images are still listed.
            # Rows match on the job key, which is also how an unreadable image's `missing:<path>`
            # error row is keyed (it has no sha256 in the manifest).
            fresh, listed = job_keys(chosen), job_keys(manifest)
            kept = read_parquet_frame(target)
            kept = kept[~kept["image_sha256"].isin(fresh) & kept["image_sha256"].isin(listed)]
            writer.add_frame(kept)
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    return summary


evaluate_partition = stoppable(evaluate_partition_async)


def evaluate_partitions(
    evaluations: Sequence[Callable[[], Awaitable[PartitionSummary]]],
    at_once: int,
    on_done: Callable[[int, PartitionSummary], None],
) -> None:
    """Several partitions' evaluations (``evaluate_partition_async`` calls), ``at_once`` at a time
    in one event loop; ``on_done`` gets each one's index and summary as it finishes.

    One loop, so SIGINT or SIGTERM stops every partition at once, each keeping its journaled
    answers and writing no file, as ``evaluate_partition`` does for one. A partition that fails
    stops the others the same way, and its error is raised."""

    async def all_of_them() -> None:
        slots = asyncio.Semaphore(max(1, at_once))

        async def one(index: int) -> None:
            async with slots:
                summary = await evaluations[index]()
            on_done(index, summary)

        try:
            async with asyncio.TaskGroup() as group:
                for index in range(len(evaluations)):
                    group.create_task(one(index))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    run_stoppable(all_of_them())
