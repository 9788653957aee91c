"""Seed-style experiments: ``mllmdf infer`` (sampled images → CSV) and ``mllmdf doc`` (CSV → markdown).

They run on the same engine and journal as the pipeline, so a prediction made here is a
cache hit for the ``predictions`` asset, and the reverse."""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable
from pathlib import Path

from defake_pipeline.datasets.layouts import DatasetSpec, LabeledImage, get_dataset
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.errors import DatasetError, DefakeError
from defake_pipeline.evaluation.partition import prompt_key_of
from defake_pipeline.evaluation.run import RunOutcome, probed_jobs, run_evaluation
from defake_pipeline.evaluation.tally import Tally
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import CSV_COLUMNS, Prediction
from defake_pipeline.storage import RefusedFile, StoredPath, refuse_special_file, relative_parts
from defake_pipeline.text import printable
from defake_pipeline.warehouse.files import local_working_copy
from defake_pipeline.warehouse.layout import HomeLayout

# The output CSVs hold whole answers, which max_response_chars may keep past the csv module's
# default field limit (128 KiB): reading one back (the summary, --continue) must not fail on it.
# The largest a C long holds everywhere.
csv.field_size_limit(2**31 - 1)

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


def display_path(path: StoredPath, cwd: Path | None = None) -> str:
    """Paths as the seed wrote them: relative to the working directory (``cwd``, or the current
    one) where possible."""
    try:
        return printable("/".join(relative_parts(path, cwd or Path.cwd())))
    except ValueError:
        return printable(str(path))


def default_output_name(dataset: str, count: int, model: str, prompt_name: str, log_id: str = "") -> str:
    return f"{dataset}-{count}_{model}_{prompt_name}{'_' + log_id if log_id else ''}"


def output_csv_path(layout: HomeLayout, output: str) -> StoredPath:
    """``-o NAME`` → DEFAKE_HOME/NAME.csv; a path with a folder, or ending in .csv, is taken as given."""
    path = Path(output)
    if path.suffix != ".csv":
        path = path.with_name(path.name + ".csv")
    return path if (path.parent != Path(".") or path.is_absolute()) else layout.home / path


def tally_of_csv(path: StoredPath) -> Tally:
    """Totals of an output CSV, read with the csv module (pandas would add most of a second to
    every ``infer``)."""

    def number(text: str | None) -> int:
        try:
            return int(float(text or "nan"))
        except ValueError:
            return -1

    with path.open(newline="", encoding="utf-8") as handle:
        rows = [
            (number(r.get("label")), number(r.get("pred")), r.get("error") or "", r.get("refused") == "True")
            for r in csv.DictReader(handle)
        ]
    labels, preds, errors, refusals = zip(*rows, strict=True) if rows else ((), (), (), ())
    return Tally.from_rows(labels, preds, errors, refusals)


def run_experiment(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt,
    images: list[LabeledImage],
    output: StoredPath,
    *,
    resume: bool = False,
    overwrite: bool = False,
    api_key: str | None = None,
    max_cost_usd: float | None = None,
    on_result: Callable[[Prediction], None] | None = None,
    batch: bool = False,
) -> RunOutcome:
    """Evaluate images and append one CSV row per image the moment its answer arrives (in
    batch mode, an image waiting for its batch gets its row from a run with ``resume`` later)."""
    try:
        refuse_special_file(output)
    except RefusedFile as exc:
        raise DefakeError(f"{output}: {exc}") from None
    if output.exists() and not (resume or overwrite):
        raise DefakeError(f"{output} already exists; pass --continue to resume it or --overwrite to start again")
    done: set[str] = set()
    if resume and output.exists():
        done = _paths_of_this_experiment(output, spec.key, prompt_key_of(spec, prompt))
    cwd = Path.cwd()
    todo = [i for i in images if display_path(i.path, cwd) not in done] if done else images
    fresh = not (resume and output.exists())
    with local_working_copy(output) as local:
        return _append_rows(layout, spec, prompt, todo, local, fresh, cwd, api_key, max_cost_usd, on_result, batch)


def _paths_of_this_experiment(output: StoredPath, model: str, prompt: str) -> set[str]:
    """The paths a CSV being continued has rows for. The seed's default names hold the prompt
    file's ``name`` field, which a copied prompt keeps, so two experiments can share one; rows of
    another model or prompt would be skipped and then published under this one. The seed's own
    CSVs have neither column."""
    done: set[str] = set()
    with output.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            done.add(row.get("path") or "")
            theirs = (row.get("model") or model, row.get("prompt") or prompt)
            if theirs != (model, prompt):
                raise DefakeError(
                    f"{output} holds answers of {theirs[0]} × {theirs[1]}, not of {model} × {prompt}; "
                    "continuing it would mix the two (name another output with -o)"
                )
    return done


def _append_rows(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt,
    todo: list[LabeledImage],
    output: Path,
    fresh: bool,
    cwd: Path,
    api_key: str | None,
    max_cost_usd: float | None,
    on_result: Callable[[Prediction], None] | None,
    batch: bool,
) -> RunOutcome:
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

    try:
        return run_evaluation(
            layout, spec, prompt, probed_jobs(todo), write, api_key=api_key, max_cost_usd=max_cost_usd, batch=batch
        )
    finally:
        if opened:
            opened[0].close()
