"""The seed's own commands: ``classify``, ``infer`` and ``doc``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from defake_pipeline.cli.app import (
    endpoint_spec,
    log,
    main,
    print_line,
    print_turns,
    setup_logging,
    stopped_by_sigterm,
)
from defake_pipeline.endpoints.registry import MAX_CONCURRENCY
from defake_pipeline.errors import DefakeError
from defake_pipeline.settings import load_settings
from defake_pipeline.warehouse.layout import HomeLayout


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-m", "--model", default="llama32vi", show_default=True, help="Model name (see presets.toml, models.toml)."
)
@click.option("-p", "--prompt", default="simple", show_default=True, help="Prompt name or path.")
@click.option("-v", "--verbose", is_flag=True, help="Print every turn's response to stderr.")
def classify(image: str, model: str, prompt: str, verbose: bool) -> None:
    """Classify one IMAGE; prints exactly real, fake or unknown."""
    from defake_pipeline.datasets.layouts import LabeledImage
    from defake_pipeline.evaluation.evaluator import WAITING
    from defake_pipeline.evaluation.run import probed_jobs, run_evaluation
    from defake_pipeline.prompting.spec import find_prompt, load_prompt

    spec, loaded = endpoint_spec(model), load_prompt(find_prompt(prompt))
    layout = HomeLayout()
    setup_logging(layout, "", verbose)  # standard output is the verdict: the rest goes to the log
    preds: list = []
    image_job = probed_jobs([LabeledImage(Path(image).absolute(), -1, "default")])
    with stopped_by_sigterm():
        outcome = run_evaluation(layout, spec, loaded, image_job, preds.append, api_key=load_settings().api_key)
    if outcome.waiting:
        print_line("error", f"{Path(image)}: {WAITING}, which `mllmdf batches` shows; it was not asked again")
        click.echo("unknown")
        sys.exit(1)
    [pred] = preds
    if verbose:
        print_turns(pred)
    if pred.error:
        print_line("error", f"{Path(image)}: {pred.error}")
    click.echo(pred.verdict)
    if pred.error:
        sys.exit(1)


@main.command()
@click.option("-m", "--model", default="llama32vi", show_default=True, help="Model name.")
@click.option(
    "-p",
    "--prompt",
    default="simple",
    show_default=True,
    help="Prompt name (searched in ./prompts, then the project's) or path.",
)
@click.option(
    "-d",
    "--dataset",
    default="",
    help="A datasets/ name, a seed name (WildFakeResampled, ImageFolders) or a folder with real/ and fake/.",
)
@click.option("--real_dir", default="", help="Folder of real images (with --fake_dir).")
@click.option("--fake_dir", default="", help="Folder of fake images (with --real_dir).")
@click.option(
    "-c",
    "--count",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Images per class, sampled at random; 0 means all.",
)
@click.option("-s", "--seed", default=3706, show_default=True, type=int, help="Random seed for the sampling.")
@click.option(
    "-l", "--log_id", default="", help="Log to DEFAKE_HOME/logs/<log_id>.log and add it to the default output name."
)
@click.option("-o", "--output", default="", help="Output name (DEFAKE_HOME/<name>.csv) or path.")
@click.option("--continue", "resume", is_flag=True, help="Resume an existing output CSV.")
@click.option("--overwrite", is_flag=True, help="Start an existing output CSV again.")
@click.option("--real_only", is_flag=True, help="Evaluate real images only.")
@click.option("--fake_only", is_flag=True, help="Evaluate fake images only.")
@click.option("--job_split", default="", help="Evaluate the m-th of n slices, such as 1/4.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=MAX_CONCURRENCY),
    default=None,
    help="Most requests in flight (default: the model's); adapts down on 429.",
)
@click.option(
    "--max-cost",
    "max_cost",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop sending requests once the next could take spending past this many USD.",
)
@click.option(
    "--batch",
    is_flag=True,
    help="Send the requests the journal cannot answer through the endpoint's Batch API (OpenAI: half "
    "price, within 24 h), print the batch ids and exit; `mllmdf batches` shows them.",
)
@click.option("--wait", is_flag=True, help="With --batch: wait for the batches and write every row.")
@click.option("-v", "--verbose", is_flag=True, help="Print every turn's response to stderr.")
def infer(
    model,
    prompt,
    dataset,
    real_dir,
    fake_dir,
    count,
    seed,
    log_id,
    output,
    resume,
    overwrite,
    real_only,
    fake_only,
    job_split,
    concurrency,
    max_cost,
    batch,
    wait,
    verbose,
) -> None:  # noqa: E501
    """Evaluate a model × prompt on sampled images and write DEFAKE_HOME/<name>.csv."""
    from tqdm import tqdm

    from defake_pipeline.datasets.derived import dataset_images
    from defake_pipeline.evaluation.tally import Tally
    from defake_pipeline.prompting.spec import find_prompt, load_prompt
    from defake_pipeline.seed.infer import (
        default_output_name,
        output_csv_path,
        resolve_dataset,
        run_experiment,
        select_samples,
        tally_of_csv,
    )

    layout = HomeLayout()
    setup_logging(layout, log_id, verbose)
    spec, loaded = endpoint_spec(model), load_prompt(find_prompt(prompt))
    if concurrency:
        spec = spec.model_copy(update={"concurrency": concurrency})
    ds = resolve_dataset(dataset, real_dir, fake_dir)
    notes: list[str] = []
    images = select_samples(
        dataset_images(ds, layout.derived_images_dir, notes), count, seed, real_only, fake_only, job_split
    )
    for note in notes:
        print_line("warning", note)
    name = output or default_output_name(ds.name, count, spec.name, loaded.name, log_id)
    target = output_csv_path(layout, name)
    log.info("infer %s × %s on %s: %d images → %s", spec.name, loaded.key, ds.name, len(images), target)
    click.echo(f"{len(images)} images ({sum(i.label == 1 for i in images)} real) → {target}", err=True)
    running = Tally()
    with (
        stopped_by_sigterm(),
        tqdm(total=len(images), desc=f"{spec.name} × {loaded.key}", unit="img", file=sys.stderr) as bar,
    ):

        def on_result(pred) -> None:
            running.add(pred)
            bar.set_postfix(running.progress(), refresh=False)
            bar.update(1)
            log.debug("%s label=%s pred=%s error=%s", pred.path, pred.label, pred.pred, pred.error)
            if verbose:
                bar.clear()
                print_turns(pred)

        outcome = run_experiment(
            layout,
            spec,
            loaded,
            images,
            target,
            resume=resume,
            overwrite=overwrite,
            api_key=load_settings().api_key,
            max_cost_usd=max_cost,
            on_result=on_result,
            batch=batch,
        )
        while outcome.waiting and wait:
            bar.clear()
            wait_for_batch_answers(layout, spec.name, outcome.batches)
            outcome = run_experiment(
                layout, spec, loaded, images, target, resume=True, api_key=load_settings().api_key,
                on_result=on_result, batch=True,
            )  # fmt: skip
    for notice in outcome.notices:
        print_line("warning", notice)
    if outcome.waiting:
        sent = f"sent {', '.join(outcome.batches)}; " if outcome.batches else ""
        click.echo(
            f"{outcome.waiting} images wait for their batches ({sent}`mllmdf batches` shows them); run this "
            "command again with --continue once they have ended, or pass --wait",
            err=True,
        )
    # The summary covers the whole output CSV (earlier runs of --continue included), not only
    # the images this invocation answered.
    whole = tally_of_csv(target) if target.exists() else Tally()
    summary = whole.progress()
    log.info("done: %s", summary)
    click.echo(
        f"accuracy {summary['all']} (reals {summary['reals']}, fakes {summary['fakes']}) on {whole.n_scored} "
        f"scored of {whole.n_images} rows ({whole.outcomes}); "
        f"this run: {running.n_images} images, "
        f"{running.n_requests} new answers, ${running.cost_usd:.4f}",
        err=True,
    )
    click.echo(str(target))


def wait_for_batch_answers(layout: HomeLayout, model: str, sent: list[str]) -> None:
    """Wait, with a progress bar, until no batch of ``model`` is open."""
    from tqdm import tqdm

    from defake_pipeline.evaluation.openai_batches import wait_for_batches

    if sent:
        click.echo(f"sent {', '.join(sent)}; waiting for the answers", err=True)
    with tqdm(desc="batches", unit="req", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        def problem(text: str) -> None:
            bar.write(f"warning: {text}; looked at again", file=sys.stderr)

        settings = load_settings()
        wait_for_batches(
            layout, endpoint_spec, settings.api_key, model, progress, settings.DEFAKE_BATCH_POLL_S, problem
        )


@main.command()
@click.argument("experiment", default="all")
@click.option(
    "-s", "--summarize_to", type=click.Path(dir_okay=False), default=None, help="Write the seed's summary CSV here."
)
def doc(experiment: str, summarize_to: str | None) -> None:
    """Write DEFAKE_HOME/<name>.md for EXPERIMENT (a name or CSV path), or for every CSV ('all')."""
    import pandas as pd

    from defake_pipeline.datasets.layouts import dataset_specs
    from defake_pipeline.seed.doc import (
        SUMMARY_COLUMNS,
        document_experiment,
        experiment_csvs,
    )
    from defake_pipeline.seed.infer import SEED_DATASET_DIRS
    from defake_pipeline.warehouse.files import write_text_atomic

    layout = HomeLayout()
    names = [*SEED_DATASET_DIRS, "ImageFolders", *(s.name for s in dataset_specs())]
    if experiment == "all":
        csvs = experiment_csvs(layout)
        if not csvs:
            print_line("note", f"no experiment CSV in {layout.home} (`mllmdf infer` writes them)")
    else:
        path = Path(experiment)
        csvs = [path if path.exists() and not path.is_dir() else layout.home / f"{experiment}.csv"]
        if not csvs[0].exists():  # one that is there but no regular file is named as such below
            raise DefakeError(f"no experiment {experiment!r}: neither a CSV path nor {csvs[0]}")
    rows = []
    for csv_path in csvs:
        try:
            row = document_experiment(csv_path, layout.home / f"{csv_path.stem}.md", names)
        except DefakeError as exc:
            if experiment != "all":
                raise
            print_line("warning", f"skipped {exc}")
            continue
        rows.append(row)
        click.echo(
            f"{row['output_path']}: accuracy {100 * row['accuracy']:.3f}% on {row['total_images']} images, "
            f"{row['fails']} fails"
        )
    if summarize_to:
        write_text_atomic(
            Path(summarize_to).absolute(), pd.DataFrame(rows, columns=SUMMARY_COLUMNS).to_csv(index=False)
        )
        click.echo(f"summary: {summarize_to}")
