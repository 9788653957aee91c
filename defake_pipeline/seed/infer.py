"""Seed-style experiments: ``mllmdf infer`` (sampled images → CSV) and ``mllmdf doc`` (CSV → markdown).

They run on the same engine and journal as the pipeline, so a prediction made here is a
cache hit for the ``predictions`` asset, and the reverse."""

from __future__ import annotations

import csv
import random
import re
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from defake_pipeline.datasets.images import ImageProbe
from defake_pipeline.datasets.layouts import DatasetSpec, LabeledImage, get_dataset
from defake_pipeline.datasets.probe_cache import ProbeCache, stat_key
from defake_pipeline.datasets.probe_worker import ProbeChunk, ProbeWorker
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.errors import DatasetError, DefakeError
from defake_pipeline.evaluation.journal import ResponseJournal
from defake_pipeline.evaluation.tally import Tally
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import CSV_COLUMNS, ImageJob, Prediction, job_key
from defake_pipeline.text import printable
from defake_pipeline.warehouse.layout import HomeLayout

# The seed's own dataset names, found relative to the working directory.
SEED_DATASET_DIRS = {"WildFakeResampled": "WildFakeResampled", "WildFakeResampled20K": "WildFakeResampled20K"}


def resolve_dataset(dataset: str | None, real_dir: str | None, fake_dir: str | None) -> DatasetSpec:
    """The dataset an ``infer`` call means: --real_dir/--fake_dir, a seed name, a folder, or datasets/."""
    if real_dir or fake_dir or dataset in (None, "", "ImageFolders"):
        if not (real_dir and fake_dir):
            raise DatasetError("give --dataset, or both --real_dir and --fake_dir")
        return DatasetSpec(
            name="ImageFolders",
            layout="image_folders",
            real_dir=Path(real_dir).absolute(),
            fake_dir=Path(fake_dir).absolute(),
        )
    if dataset in SEED_DATASET_DIRS:
        return DatasetSpec(name=dataset, layout="real_fake", root=Path(SEED_DATASET_DIRS[dataset]).absolute())
    if Path(dataset).is_dir():
        return DatasetSpec(name=Path(dataset).name, layout="real_fake", root=Path(dataset).absolute())
    return get_dataset(dataset)


def parse_job_split(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not (1 <= int(match[1]) <= int(match[2])):
        raise DefakeError(f"--job_split {text!r}: expected m/n with 1 <= m <= n, such as 1/4")
    return int(match[1]), int(match[2])


def select_samples(
    images: list[LabeledImage],
    count: int,
    seed: int,
    real_only: bool = False,
    fake_only: bool = False,
    job_split: str = "",
) -> list[LabeledImage]:
    """The seed's selection: ``count`` per class at random (0 = all), then the m-th of n slices."""
    if real_only and fake_only:
        raise DefakeError("--real_only and --fake_only exclude each other")
    rng = random.Random(seed)
    picked: list[list[LabeledImage]] = []
    for label in (1, 0):
        pool = [i for i in images if i.label == label]
        picked.append(rng.sample(pool, count) if 0 < count < len(pool) else pool)
    reals, fakes = picked
    reals, fakes = ([] if fake_only else reals), ([] if real_only else fakes)
    if job_split:
        m, n = parse_job_split(job_split)
        reals = reals[len(reals) * (m - 1) // n : len(reals) * m // n]
        fakes = fakes[len(fakes) * (m - 1) // n : len(fakes) * m // n]
    return reals + fakes


def display_path(path: Path, cwd: Path | None = None) -> str:
    """Paths as the seed wrote them: relative to the working directory (``cwd``, or the current
    one) where possible."""
    try:
        return printable(str(path.relative_to(cwd or Path.cwd())))
    except ValueError:
        return printable(str(path))


def default_output_name(dataset: str, count: int, model: str, prompt_name: str, log_id: str = "") -> str:
    return f"{dataset}-{count}_{model}_{prompt_name}{'_' + log_id if log_id else ''}"


def output_csv_path(layout: HomeLayout, output: str) -> Path:
    """``-o NAME`` → DEFAKE_HOME/NAME.csv; a path with a folder, or ending in .csv, is taken as given."""
    path = Path(output)
    if path.suffix != ".csv":
        path = path.with_name(path.name + ".csv")
    return path if (path.parent != Path(".") or path.is_absolute()) else layout.home / path


def tally_of_csv(path: Path) -> Tally:
    """Totals of an output CSV, read with the csv module (pandas would add most of a second to
    every ``infer``)."""

    def number(text: str | None) -> int:
        try:
            return int(float(text or "nan"))
        except ValueError:
            return -1

    with path.open(newline="", encoding="utf-8") as handle:
        rows = [(number(r.get("label")), number(r.get("pred")), r.get("error") or "") for r in csv.DictReader(handle)]
    labels, preds, errors = zip(*rows, strict=True) if rows else ((), (), ())
    return Tally.from_rows(labels, preds, errors)


# Images probed ahead of the engine, and how many go to the probe worker at once.
PROBE_AHEAD = 64
PROBE_CHUNK = 16


class ProbedJobs:
    """Jobs for the images, in order. A probe remembered in ``cache`` (same path, size and
    modification time) is used as it is; the others go to a worker process in chunks, a little
    ahead of the engine (see ``probe_worker``: while it starts, they are probed here).

    ``start()`` sends the first chunks before anyone asks for a job, so the worker probes them
    while the caller does something else (``run_experiment`` imports the engine meanwhile).
    """

    def __init__(self, images: list[LabeledImage], cache: ProbeCache | None = None):
        self.worker = ProbeWorker()
        self._images = iter(images)
        self._cache = cache
        self._ahead: deque[tuple[LabeledImage, tuple[int, int] | None, ImageProbe | ProbeChunk, int]] = deque()
        self._chunk: ProbeChunk | None = None

    def start(self) -> ProbedJobs:
        """Queue images until PROBE_AHEAD are ahead; full chunks go to the worker at once."""
        cache = self._cache
        while len(self._ahead) < PROBE_AHEAD and (item := next(self._images, None)) is not None:
            key = stat_key(item.path) if cache is not None else None
            known = cache.get(item.path, key) if cache is not None and key is not None else None
            if known is not None:
                self._ahead.append((item, None, known, 0))
                continue
            chunk = self._chunk
            if chunk is None or chunk.submitted:  # the engine may have asked for a partial chunk
                chunk = self._chunk = ProbeChunk(self.worker, [])
            self._ahead.append((item, key, chunk, len(chunk.paths)))
            chunk.paths.append(item.path)
            if len(chunk.paths) >= PROBE_CHUNK:
                chunk.submit()
                self._chunk = None
        return self

    def _job(
        self, item: LabeledImage, key: tuple[int, int] | None, probing: ImageProbe | ProbeChunk, index: int
    ) -> ImageJob:
        probe = probing.probe(index) if isinstance(probing, ProbeChunk) else probing
        if self._cache is not None and key is not None:
            self._cache.put(item.path, key, probe)
        return ImageJob(
            path=item.path, key=job_key(probe.sha256, str(item.path)), label=item.label, probe_error=probe.error
        )

    def __iter__(self) -> Iterator[ImageJob]:
        try:
            while self.start()._ahead:
                yield self._job(*self._ahead.popleft())
        finally:
            self.close()

    def close(self) -> None:
        self.worker.close()


def jobs_for(images: list[LabeledImage], cache: ProbeCache | None = None) -> ProbedJobs:
    """Jobs for the images, in order (see ``ProbedJobs``)."""
    return ProbedJobs(images, cache)


def run_experiment(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt,
    images: list[LabeledImage],
    output: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    api_key: str | None = None,
    max_cost_usd: float | None = None,
    on_result: Callable[[Prediction], None] | None = None,
) -> list[str]:
    """Evaluate images and append one CSV row per image the moment its answer arrives; returns
    what the run's user should hear of (see ``Evaluator.notices``)."""
    if output.exists() and not (resume or overwrite):
        raise DefakeError(f"{output} already exists; pass --continue to resume it or --overwrite to start again")
    done: set[str] = set()
    if resume and output.exists():
        with output.open(newline="", encoding="utf-8") as handle:
            done = {row.get("path") or "" for row in csv.DictReader(handle)}
    cwd = Path.cwd()
    todo = [i for i in images if display_path(i.path, cwd) not in done] if done else images
    fresh = not (resume and output.exists())
    journal = ResponseJournal(layout.journal)
    # The file is opened at the first row: a run that fails before any answer (unreachable
    # endpoint, missing decorator) leaves no header-only CSV that a rerun would refuse.
    opened: list = []

    def write(pred: Prediction) -> None:
        if not opened:
            output.parent.mkdir(parents=True, exist_ok=True)
            handle = output.open("w" if fresh else "a", newline="", encoding="utf-8")
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if fresh:
                writer.writeheader()
            opened.extend([handle, writer])
        handle, writer = opened
        writer.writerow({**pred.as_row(), "path": display_path(Path(pred.path), cwd)})
        handle.flush()
        if on_result:
            on_result(pred)

    probes = ProbeCache(layout.probe_cache)
    jobs = jobs_for(todo, probes)
    try:
        # The worker probes the first images while the engine is imported: importing it imports
        # the openai SDK, 0.4-0.9 s of this process's start-up.
        jobs.start()
        from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator

        evaluator = make_evaluator(spec, prompt, journal, api_key, max_cost_usd)
        evaluate_sync(jobs, evaluator, on_result=write, collect=False)
        return evaluator.notices
    finally:
        jobs.close()
        probes.close()
        journal.close()
        if opened:
            opened[0].close()
