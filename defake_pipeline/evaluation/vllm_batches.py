"""Batch files for ``vllm run-batch``: the requests the journal cannot answer exported in
OpenAI's batch input format, and the output file's answers imported under the same keys."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from defake_pipeline.datasets.layouts import DatasetSpec
from defake_pipeline.datasets.manifest import current_manifest, jobs_from_manifest
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.errors import DefakeError
from defake_pipeline.evaluation.batch import (
    BatchEvaluator,
    BatchFiles,
    BatchOutcome,
    journal_batch_lines,
    temporary_folder,
)
from defake_pipeline.evaluation.batch_records import EXPORTED, BatchRecords, BatchRequest
from defake_pipeline.evaluation.engine import evaluate
from defake_pipeline.evaluation.generations import partition_generation
from defake_pipeline.evaluation.journal import Journal, layout_journal
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.warehouse.files import atomic_path
from defake_pipeline.warehouse.layout import HomeLayout


def export_batch(
    layout: HomeLayout, spec: ModelSpec, prompt: LoadedPrompt, datasets: list[DatasetSpec], target: Path
) -> tuple[int, str]:
    """The requests of a model × prompt on ``datasets`` that the journal cannot answer, written
    to ``target`` for ``vllm run-batch -i`` and recorded, so ``import_batch_file`` journals
    their answers under the same keys. Returns how many were written, and the model id in them."""
    jobs = {job.key: job for ds in datasets for job in jobs_from_manifest(current_manifest(layout, ds))}
    return asyncio.run(_export(layout, spec, prompt, list(jobs.values()), target))


async def _export(
    layout: HomeLayout, spec: ModelSpec, prompt: LoadedPrompt, jobs: list, target: Path
) -> tuple[int, str]:
    records, journal = BatchRecords(layout), layout_journal(layout)
    try:
        with temporary_folder() as folder:
            # One file, however large: vllm run-batch has no Batch API limits.
            files = BatchFiles(Path(folder), max_lines=sys.maxsize, max_bytes=sys.maxsize)
            generation = partition_generation(layout, spec, prompt)
            evaluator = BatchEvaluator(spec, prompt, journal, records, files, None, offline=True, generation=generation)
            await evaluate(jobs, evaluator, collect=False)
            with atomic_path(target) as tmp, tmp.open("wb") as out:
                for path, _ in files.files:
                    out.write(path.read_bytes())
            requests = [request for _, batch in files.files for request in batch]
            if requests:
                export_id = f"export-{uuid.uuid4().hex[:12]}"
                partition = f"{spec.key}|{prompt.key}"
                records.record(export_id, evaluator.backend.endpoint, spec.name, partition, requests, status=EXPORTED)
            return len(requests), evaluator.model_id
    finally:
        journal.close()
        records.close()


def import_batch_file(layout: HomeLayout, spec_of: Callable[[str], ModelSpec], path: Path) -> BatchOutcome:
    """A ``vllm run-batch`` output file: each answer journaled under the key it was exported with."""
    if not path.is_file():  # a named pipe would block the command
        raise DefakeError(f"{path}: not a regular file (a named pipe, device or folder); only regular files are read")
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DefakeError(f"{path}: line {number} is not UTF-8") from None
        lines.append(line)
        try:
            if line.strip() and not isinstance(json.loads(line), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise DefakeError(f"{path}: line {number} is not a batch output line ({exc})") from None
    records, journal = BatchRecords(layout), layout_journal(layout)
    try:
        return import_output(records, journal, spec_of, lines)
    finally:
        journal.close()
        records.close()


def import_output(
    records: BatchRecords, journal: Journal, spec_of: Callable[[str], ModelSpec], lines: list[str]
) -> BatchOutcome:
    """Output lines: each answer journaled under the key its custom_id was exported with
    (``spec_of`` gives the model entry of each export)."""
    ids = [str(json.loads(line).get("custom_id")) for line in lines if line.strip()]
    groups: dict[tuple[str, str], dict[str, BatchRequest]] = {}
    for custom_id, (batch_id, model, request) in records.exported_requests(ids).items():
        groups.setdefault((batch_id, model), {})[custom_id] = request
    outcome = BatchOutcome()
    for (batch_id, model), requests in groups.items():
        part = BatchOutcome()
        journal_batch_lines(spec_of(model), journal, requests, lines, batch_id, part)
        records.end(batch_id, "imported", part.outcomes, part.cost_usd)
        outcome.answered += part.answered
        outcome.failed += part.failed
        outcome.cost_usd += part.cost_usd
        outcome.outcomes.update(part.outcomes)
    outcome.unreached = len(set(ids) - outcome.outcomes.keys())  # lines of no export recorded here
    return outcome
