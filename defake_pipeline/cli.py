"""``mllmdf``: the command line. Every command is a thin shell over ``defake_pipeline.core``."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from defake_pipeline.core.errors import DefakeError, RunInterrupted
from defake_pipeline.core.paths import HomeLayout
from defake_pipeline.core.safe_text import visible_controls

log = logging.getLogger("mllmdf")


class DefakeGroup(click.Group):
    """Shows a DefakeError as one line on stderr (exit 2), never as a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DefakeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except KeyboardInterrupt:
            click.echo(f"error: {RunInterrupted(signal.SIGINT)}", err=True)
            sys.exit(128 + signal.SIGINT)


def _setup_logging(layout: HomeLayout, log_id: str, verbose: bool) -> None:
    """Log to stderr, and to DEFAKE_HOME/logs/<log_id or main>.log as the seed's -l/--log_id did."""
    log_dir = layout.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_dir / f"{log_id or 'main'}.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [file_handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _print_turns(pred) -> None:
    # Answers and file names are shown, never acted on: escape sequences in them are made visible.
    name = visible_controls(Path(pred.path).name)
    for i, turn in enumerate(pred.turns):
        click.echo(f"--- {name} · turn {i + 1}/{len(pred.turns)} ---\n{visible_controls(turn)}", err=True)
    if pred.error:
        click.echo(f"--- {name} · error: {visible_controls(pred.error)}", err=True)


@click.group(cls=DefakeGroup)
def main() -> None:
    """Evaluate multimodal LLMs as detectors of AI-generated images."""


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("-m", "--model", default="llama32vi", show_default=True, help="Model name (see presets.toml, models.toml).")
@click.option("-p", "--prompt", default="simple", show_default=True, help="Prompt name or path.")
@click.option("-v", "--verbose", is_flag=True, help="Print every turn's response to stderr.")
def classify(image: str, model: str, prompt: str, verbose: bool) -> None:
    """Classify one IMAGE; prints exactly real, fake or unknown."""
    from defake_pipeline.core.engine import evaluate_sync, make_evaluator
    from defake_pipeline.core.experiments import jobs_for
    from defake_pipeline.core.datasets import LabeledImage
    from defake_pipeline.core.journal import ResponseJournal
    from defake_pipeline.core.models import get_model
    from defake_pipeline.core.prompts import find_prompt, load_prompt

    spec, loaded = get_model(model), load_prompt(find_prompt(prompt))
    layout = HomeLayout()
    journal = ResponseJournal(layout.journal)
    try:
        evaluator = make_evaluator(spec, loaded, journal, os.environ.get("OPENAI_API_KEY"))
        [pred] = evaluate_sync(jobs_for([LabeledImage(Path(image).absolute(), -1, "default")]), evaluator)
    finally:
        journal.close()
    if verbose:
        _print_turns(pred)
    if pred.error:
        click.echo(f"error: {visible_controls(f'{Path(image)}: {pred.error}')}", err=True)
    click.echo(pred.verdict)
    if pred.error:
        sys.exit(1)


@main.command()
@click.option("-m", "--model", default="llama32vi", show_default=True, help="Model name.")
@click.option("-p", "--prompt", default="simple", show_default=True, help="Prompt name (searched in ./prompts, then the project's) or path.")
@click.option("-d", "--dataset", default="", help="A datasets/ name, a seed name (WildFakeResampled, ImageFolders) or a folder with real/ and fake/.")
@click.option("--real_dir", default="", help="Folder of real images (with --fake_dir).")
@click.option("--fake_dir", default="", help="Folder of fake images (with --real_dir).")
@click.option("-c", "--count", default=10, show_default=True, type=int, help="Images per class, sampled at random; 0 means all.")
@click.option("-s", "--seed", default=3706, show_default=True, type=int, help="Random seed for the sampling.")
@click.option("-l", "--log_id", default="", help="Log to DEFAKE_HOME/logs/<log_id>.log and add it to the default output name.")
@click.option("-o", "--output", default="", help="Output name (DEFAKE_HOME/<name>.csv) or path.")
@click.option("--continue", "resume", is_flag=True, help="Resume an existing output CSV.")
@click.option("--overwrite", is_flag=True, help="Start an existing output CSV again.")
@click.option("--real_only", is_flag=True, help="Evaluate real images only.")
@click.option("--fake_only", is_flag=True, help="Evaluate fake images only.")
@click.option("--job_split", default="", help="Evaluate the m-th of n slices, such as 1/4.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Most requests in flight (default: the model's); adapts down on 429.")
@click.option("--max-cost", "max_cost", type=click.FloatRange(min=0), default=None, help="Stop sending requests once the next could take spending past this many USD.")
@click.option("-v", "--verbose", is_flag=True, help="Print every turn's response to stderr.")
def infer(model, prompt, dataset, real_dir, fake_dir, count, seed, log_id, output, resume, overwrite, real_only, fake_only, job_split, concurrency, max_cost, verbose) -> None:  # noqa: E501
    """Evaluate a model × prompt on sampled images and write DEFAKE_HOME/<name>.csv."""
    from tqdm import tqdm

    from defake_pipeline.core.datasets import list_images
    from defake_pipeline.core.experiments import (
        default_output_name, output_csv_path, resolve_dataset, run_experiment, select_samples,
    )  # fmt: skip
    from defake_pipeline.core.tally import Tally
    from defake_pipeline.core.models import get_model
    from defake_pipeline.core.prompts import find_prompt, load_prompt

    layout = HomeLayout()
    _setup_logging(layout, log_id, verbose)
    spec, loaded = get_model(model), load_prompt(find_prompt(prompt))
    if concurrency:
        spec = spec.model_copy(update={"concurrency": concurrency})
    ds = resolve_dataset(dataset, real_dir, fake_dir)
    images = select_samples(list_images(ds), count, seed, real_only, fake_only, job_split)
    name = output or default_output_name(ds.name, count, spec.name, loaded.name, log_id)
    target = output_csv_path(layout, name)
    log.info("infer %s × %s on %s: %d images → %s", spec.name, loaded.key, ds.name, len(images), target)
    click.echo(f"{len(images)} images ({sum(i.label == 1 for i in images)} real) → {target}", err=True)
    running = Tally()
    with tqdm(total=len(images), desc=f"{spec.name} × {loaded.key}", unit="img", file=sys.stderr) as bar:

        def on_result(pred) -> None:
            running.add(pred)
            bar.set_postfix(running.progress(), refresh=False)
            bar.update(1)
            log.debug("%s label=%s pred=%s error=%s", pred.path, pred.label, pred.pred, pred.error)
            if verbose:
                bar.clear()
                _print_turns(pred)

        run_experiment(
            layout, spec, loaded, images, target, resume=resume, overwrite=overwrite,
            api_key=os.environ.get("OPENAI_API_KEY"), max_cost_usd=max_cost, on_result=on_result,
        )  # fmt: skip
    # The summary covers the whole output CSV (earlier runs of --continue included), not only
    # the images this invocation answered.
    import pandas as pd

    rows = pd.read_csv(target, usecols=["label", "pred", "error"]) if target.exists() else None
    whole = Tally.from_rows(rows["label"], rows["pred"], rows["error"]) if rows is not None else Tally()
    summary = whole.progress()
    log.info("done: %s", summary)
    click.echo(f"accuracy {summary['all']} (reals {summary['reals']}, fakes {summary['fakes']}) over "
               f"{whole.n_images} rows, {whole.n_errors} errors; this run: {running.n_images} images, "
               f"{running.n_requests} new requests, ${running.cost_usd:.4f}", err=True)
    click.echo(str(target))


@main.command()
@click.argument("experiment", default="all")
@click.option("-s", "--summarize_to", type=click.Path(dir_okay=False), default=None, help="Write the seed's summary CSV here.")
def doc(experiment: str, summarize_to: str | None) -> None:
    """Write DEFAKE_HOME/<name>.md for EXPERIMENT (a name or CSV path), or for every CSV ('all')."""
    import pandas as pd

    from defake_pipeline.core.datasets import dataset_specs
    from defake_pipeline.core.experiments import SEED_DATASET_DIRS, SUMMARY_COLUMNS, document_experiment, experiment_csvs

    layout = HomeLayout()
    names = [*SEED_DATASET_DIRS, "ImageFolders", *(s.name for s in dataset_specs())]
    if experiment == "all":
        csvs = experiment_csvs(layout)
    else:
        path = Path(experiment)
        csvs = [path if path.is_file() else layout.home / f"{experiment}.csv"]
        if not csvs[0].is_file():
            raise DefakeError(f"no experiment {experiment!r}: neither a CSV path nor {csvs[0]}")
    rows = []
    for csv_path in csvs:
        try:
            row = document_experiment(csv_path, layout.home / f"{csv_path.stem}.md", names)
        except DefakeError as exc:
            if experiment != "all":
                raise
            click.echo(f"warning: skipped {exc}", err=True)
            continue
        rows.append(row)
        click.echo(f"{row['output_path']}: accuracy {100 * row['accuracy']:.3f}% on {row['total_images']} images, {row['fails']} fails")
    if summarize_to:
        pd.DataFrame(rows, columns=SUMMARY_COLUMNS).to_csv(summarize_to, index=False)
        click.echo(f"summary: {summarize_to}")


@main.command()
@click.option("-m", "--model", "models", multiple=True, help="Model name (repeatable). Default: models.toml's registered list.")
@click.option("-p", "--prompt", "prompts", multiple=True, help="Prompt name or path (repeatable). Default: every prompt file.")
@click.option("-d", "--dataset", "datasets", multiple=True, help="Only refresh and evaluate these datasets (repeatable). Default: all.")
@click.option("-j", "--parallel", type=click.IntRange(min=1), default=2, show_default=True, help="Prediction partitions run at once, each in its own process.")
def materialize(models: tuple[str, ...], prompts: tuple[str, ...], datasets: tuple[str, ...], parallel: int) -> None:
    """Materialize the asset graph for the chosen model × prompt partitions on the local Dagster instance.

    A model not registered in models.toml is first checked (key set, endpoint answering);
    if the check fails, nothing is registered and nothing runs.
    """
    from defake_pipeline.core.backends import check_endpoint
    from defake_pipeline.core.datasets import dataset_specs, get_dataset
    from defake_pipeline.core.store import missing_manifest_lines, missing_manifests
    from defake_pipeline.core.models import get_model, registered_models
    from defake_pipeline.core.prompts import find_prompt, load_prompt, prompt_files
    from defake_pipeline.defs.instance import local_instance
    from defake_pipeline.defs.runs import gate_failures, materialize_evaluation

    specs = [get_model(m) for m in (models or registered_models())]
    prompt_paths = [find_prompt(p) for p in prompts] if prompts else prompt_files()
    prompt_keys = list(dict.fromkeys(load_prompt(p).key for p in prompt_paths))
    dataset_keys = [get_dataset(d).key for d in datasets]
    registered = {get_model(m).key for m in registered_models()}
    for spec in specs:
        if spec.key not in registered:
            check_endpoint(spec, os.environ.get("OPENAI_API_KEY"))
    model_keys = list(dict.fromkeys(s.key for s in specs))
    click.echo(f"materializing {len(model_keys)} model(s) × {len(prompt_keys)} prompt(s): "
               f"{', '.join(model_keys)} × {', '.join(prompt_keys)}", err=True)
    materialize_evaluation(local_instance(), model_keys, prompt_keys, datasets=dataset_keys, max_parallel=parallel)
    layout = HomeLayout()
    click.echo(layout.leaderboard_file.read_text(encoding="utf-8"))
    pairs = [(m, p) for m in model_keys for p in prompt_keys]
    failures = gate_failures(layout, pairs)
    for line in failures:
        click.echo(f"warning: {line}; left off the leaderboard", err=True)
    for line in missing_manifest_lines(layout, missing_manifests(layout, [spec.key for spec in dataset_specs()])):
        click.echo(f"warning: {line}", err=True)
    for m, p in pairs:
        if layout.report_file(m, p).exists():
            click.echo(f"report: {layout.report_file(m, p)}")
    click.echo(f"warehouse: {layout.warehouse}")


if __name__ == "__main__":
    main()
