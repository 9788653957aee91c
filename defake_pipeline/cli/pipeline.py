"""``mllmdf materialize``, ``estimate``, ``paper`` and ``ui``: the asset graph on the local Dagster instance."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from defake_pipeline.cli.app import endpoint_spec, main, print_line
from defake_pipeline.records import NO_PROMPT
from defake_pipeline.settings import load_settings
from defake_pipeline.warehouse.files import write_text_atomic
from defake_pipeline.warehouse.layout import HomeLayout

if TYPE_CHECKING:
    from defake_pipeline.endpoints.registry import ModelSpec


MODELS = click.option(
    "-m", "--model", "models", multiple=True, help="Model name (repeatable). Default: models.toml's registered list."
)
PROMPTS = click.option(
    "-p", "--prompt", "prompts", multiple=True, help="Prompt name or path (repeatable). Default: every prompt file."
)


def chosen_models_and_prompts(models: tuple[str, ...], prompts: tuple[str, ...]) -> tuple[list[ModelSpec], list[Path]]:
    """The models' specs (the registered ones where none is named) and the prompts' files
    (every prompt file where none is named): what `materialize` evaluates and `estimate` prices."""
    from defake_pipeline.endpoints.registry import registered_models
    from defake_pipeline.prompting.spec import find_prompt, pipeline_prompt, prompt_index

    specs = [endpoint_spec(m) for m in (models or registered_models())]
    prompt_paths = [pipeline_prompt(find_prompt(p)) for p in prompts] if prompts else list(prompt_index().values())
    return specs, prompt_paths


@main.command()
@MODELS
@PROMPTS
@click.option(
    "-d", "--dataset", "datasets", multiple=True, help="Refresh and evaluate only these datasets (repeatable)."
)
@click.option(
    "-j",
    "--parallel",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Prediction partitions evaluated at once, in one run per range of adjacent partitions.",
)
@click.option(
    "--rehash",
    is_flag=True,
    help="Hash every image again: a rescan trusts an unchanged size and modification time, "
    "so a file replaced by another of the same size and timestamp is found only this way.",
)
@click.option(
    "--batch",
    is_flag=True,
    help="Send the requests the journal cannot answer through the Batch API; the daemon's batches_sensor "
    "(or `mllmdf batches`, then this command again) completes the partitions.",
)
def materialize(
    models: tuple[str, ...],
    prompts: tuple[str, ...],
    datasets: tuple[str, ...],
    parallel: int,
    rehash: bool,
    batch: bool,
) -> None:
    """Materialize the asset graph for the chosen model × prompt partitions on the local Dagster instance.

    A model not registered in models.toml is first checked (key set, endpoint answering);
    if the check fails, nothing is registered and nothing runs.
    """
    # An unusable home is one line before Dagster and the SDK are even imported (about 3 s).
    layout = HomeLayout()
    layout.make_first_folder()
    from defake_pipeline.cli.instance import local_instance
    from defake_pipeline.cli.launch import gate_failures, materialize_evaluation
    from defake_pipeline.datasets.layouts import dataset_specs, defined_datasets, get_dataset
    from defake_pipeline.endpoints.chat import check_endpoint
    from defake_pipeline.endpoints.registry import get_model, registered_models
    from defake_pipeline.evaluation.openai_batches import open_batch_lines
    from defake_pipeline.prompting.spec import load_prompt
    from defake_pipeline.reporting.render import leaderboard_top
    from defake_pipeline.warehouse.parquet import (
        missing_manifest_lines,
        missing_manifests,
    )

    defined_datasets()  # nothing to evaluate without one: say where to add it before anything starts
    specs, prompt_paths = chosen_models_and_prompts(models, prompts)
    prompt_keys = list(dict.fromkeys(load_prompt(p).key for p in prompt_paths))
    dataset_keys = [get_dataset(d).key for d in datasets]
    registered = {get_model(m).key for m in registered_models()}
    for spec in specs:
        if spec.key not in registered:
            check_endpoint(spec, load_settings().api_key)
    model_keys = list(dict.fromkeys(s.key for s in specs))
    baselines = list(dict.fromkeys(s.key for s in specs if s.backend == "baseline"))
    chat = [m for m in model_keys if m not in baselines]
    if chat:
        click.echo(
            f"materializing {len(chat)} model(s) × {len(prompt_keys)} prompt(s): "
            f"{', '.join(chat)} × {', '.join(prompt_keys)}",
            err=True,
        )
    if baselines:
        click.echo(
            f"materializing {len(baselines)} baseline(s), which read no prompt: {', '.join(baselines)}", err=True
        )
    materialize_evaluation(
        local_instance(),
        model_keys,
        prompt_keys,
        datasets=dataset_keys,
        max_parallel=parallel,
        rehash=rehash,
        batch=batch,
    )
    click.echo(leaderboard_top(layout))
    click.echo(f"leaderboard: {layout.leaderboard_file}")
    pairs = [(m, p) for m in chat for p in prompt_keys] + [(b, NO_PROMPT) for b in baselines]
    waiting = open_batch_lines(layout, {f"{m}|{p}" for m in chat for p in prompt_keys}) if chat else {}
    for line in gate_failures(layout, pairs):
        if not any(line.startswith(f"{key} ") for key in waiting):  # said below: it waits for its batches
            print_line("warning", f"{line}; left off the leaderboard")
    for line in missing_manifest_lines(layout, missing_manifests(layout, [spec.key for spec in dataset_specs()])):
        print_line("warning", line)
    for m, p in pairs:
        if layout.report_file(m, p).exists():
            click.echo(f"report: {layout.report_file(m, p)}")
    click.echo(f"warehouse: {layout.warehouse}")
    for line in waiting.values():
        click.echo(f"open batch: {line}", err=True)
    if waiting:
        click.echo(
            "the daemon's batches_sensor completes these partitions; with no daemon, run `mllmdf batches` once "
            "they have ended, then this command again",
            err=True,
        )


@main.command()
@MODELS
@PROMPTS
@click.option("-d", "--dataset", "datasets", multiple=True, help="Only these datasets (repeatable). Default: all.")
def estimate(models: tuple[str, ...], prompts: tuple[str, ...], datasets: tuple[str, ...]) -> None:
    """What materializing the chosen model × prompt partitions would send and cost now, sending
    nothing: the requests the journal cannot answer, their tokens (images by the model's rule) and
    an upper bound in dollars. It takes what `materialize` takes, with the same defaults."""
    from defake_pipeline.datasets.layouts import defined_datasets, get_dataset
    from defake_pipeline.evaluation.estimate import estimate_datasets
    from defake_pipeline.prompting.spec import load_prompt

    specs, prompt_paths = chosen_models_and_prompts(models, prompts)
    loaded = list({p.key: p for p in map(load_prompt, prompt_paths)}.values())
    chosen = [get_dataset(d) for d in datasets] if datasets else defined_datasets()
    layout, api_key = HomeLayout(), load_settings().api_key
    lines, total = 0, 0.0
    for spec in {spec.key: spec for spec in specs}.values():
        if spec.backend == "baseline":
            click.echo(f"{spec.name} is a baseline detector: it runs here and sends no request; $0")
            continue
        for prompt in loaded:
            figures = estimate_datasets(layout, spec, prompt, chosen, api_key)
            click.echo(f"on {', '.join(ds.key for ds in chosen)}: {figures.line()}")
            lines, total = lines + 1, total + figures.usd
    if lines > 1:
        click.echo(f"in all: at most ${total:.4f}")


@main.command()
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Markdown file. Default: DEFAKE_HOME/reports/paper.md."
)
def paper(output: str | None) -> None:
    """Write a results section from the warehouse: main results, per generator, robustness and
    calibration tables in one markdown file, and a CSV per table beside it."""
    from defake_pipeline.reporting.paper import write_paper
    from defake_pipeline.storage import stored_path

    target, csvs = write_paper(HomeLayout(), stored_path(output) if output else None)
    click.echo(f"results: {target}")
    for csv in csvs:
        click.echo(f"table: {csv}")


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
def ui(port: int) -> None:
    """The Dagster UI and daemon (`dagster dev`) on this project, at http://127.0.0.1:PORT: lineage,
    runs, every report, and the sensors that keep it current."""
    import json
    import os
    import socket

    from defake_pipeline.cli.instance import local_instance
    from defake_pipeline.errors import DefakeError
    from defake_pipeline.settings import project_root

    # dagster dev would go on without its webserver, one log line saying why among the daemon's.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the webserver binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DefakeError(f"127.0.0.1:{port} cannot be served ({exc.strerror}); choose another --port") from None
    home = Path(local_instance().root_directory)  # the project's instance, its pools' limits set
    # The code location has the name `dg` gives it, and loads where the project is, so its sensors
    # read this project's datasets, prompts and models.toml from whichever folder this ran in.
    location = {
        "module_name": "defake_pipeline.definitions",
        "location_name": "defake_pipeline",
        "working_directory": str(project_root() or Path.cwd()),
    }
    workspace = home / "workspace.yaml"
    write_text_atomic(workspace, json.dumps({"load_from": [{"python_module": location}]}, indent=2) + "\n")
    command = dagster_dev_command(port, workspace)
    os.execv(command[0], command)


def dagster_dev_command(port: int, workspace: Path) -> list[str]:
    """``dagster dev`` on ``workspace``, its webserver bound to loopback only."""
    return [
        sys.executable,
        # Its first line would say that `dg dev` supersedes it and its use is discouraged, but
        # `dg dev` serves a dg project's own folder, not a project of datasets and prompts.
        "-W",
        "ignore:Function `dev_command` is superseded",
        "-m",
        "dagster",
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(workspace),
    ]
