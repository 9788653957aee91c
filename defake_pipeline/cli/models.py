"""``mllmdf models``: list, register and remove the models the pipeline evaluates."""

from __future__ import annotations

import click

from defake_pipeline.cli.app import main, print_line
from defake_pipeline.errors import ModelConfigError


@main.group()
def models() -> None:
    """The models the pipeline evaluates: those models.toml registers, and ad hoc ones a CLI run asked for."""


@models.command("list")
def list_models() -> None:
    """Every known model: registered (the daemon keeps it current), ad hoc (run from the CLI
    only, never by the daemon on its own) or available (a preset or models.toml entry)."""
    from defake_pipeline.cli.instance import local_instance
    from defake_pipeline.defs.partitions import MODEL
    from defake_pipeline.endpoints.registry import model_table, registered_model_keys

    registered = registered_model_keys()
    partitions = set(local_instance().get_dynamic_partitions(MODEL))
    seen: set[str] = set()
    click.echo(f"{'name':<18} {'key':<24} {'backend':<12} status")
    for name, spec in sorted(model_table().items()):
        if spec.name != name or spec.key in seen:
            continue  # an alias
        seen.add(spec.key)
        status = "registered" if spec.key in registered else "ad hoc" if spec.key in partitions else "available"
        click.echo(f"{spec.name:<18} {spec.key:<24} {spec.backend:<12} {status}")


def _register(names: list[str]) -> None:
    """Make ``names`` the registered list, and say where; outside any project, the working
    folder's new models.toml makes it one, whose datasets it must then define."""
    from defake_pipeline.endpoints.registry import write_registered
    from defake_pipeline.settings import project_root

    outside = project_root() is None
    file = write_registered(names)
    click.echo(f"{file}: registered = {names}")
    if outside:
        print_line("note", f"{file} makes {file.parent} a project: define its datasets in {file.parent / 'datasets'}")


@models.command("add")
@click.argument("names", nargs=-1, required=True)
def add_models(names: tuple[str, ...]) -> None:
    """Register models in models.toml: the daemon evaluates them on every prompt and keeps them current."""
    from defake_pipeline.endpoints.registry import get_model, registered_models

    current = registered_models()
    wanted = list(current)
    for name in names:
        spec = get_model(name)  # an unknown name is one error listing the known ones
        if spec.name not in wanted and name not in wanted:
            wanted.append(spec.name)
    _register(wanted)


@models.command("remove")
@click.argument("names", nargs=-1, required=True)
def remove_models(names: tuple[str, ...]) -> None:
    """Unregister models and take their results off the leaderboard (their paid answers stay in
    the journal, so registering them again costs nothing)."""
    from defake_pipeline.cli.instance import local_instance
    from defake_pipeline.cli.launch import publish
    from defake_pipeline.defs.partitions import MODEL
    from defake_pipeline.endpoints.registry import get_model, registered_models
    from defake_pipeline.warehouse.files import remove_tree
    from defake_pipeline.warehouse.layout import HomeLayout

    specs = [get_model(n) for n in names]
    keys = {s.key for s in specs}
    current = registered_models()
    kept = [n for n in current if get_model(n).key not in keys]
    instance = local_instance()
    present = [k for k in instance.get_dynamic_partitions(MODEL) if k in keys]
    if kept == current and not present:
        raise ModelConfigError(f"{', '.join(names)}: neither registered in models.toml nor evaluated before")
    if kept != current:
        _register(kept)
    layout = HomeLayout()
    for key in present:
        instance.delete_dynamic_partition(MODEL, key)
    for key in keys:
        remove_tree(layout.predictions_dir / f"model={key}")
    if layout.manifests_dir.exists() and any(layout.manifests_dir.glob("*.parquet")):
        publish(instance)
    click.echo(f"removed: {', '.join(sorted(keys))}")
