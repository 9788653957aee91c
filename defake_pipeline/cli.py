"""``mllmdf``: the command line. Every command is a thin shell over ``defake_pipeline.core``."""

from __future__ import annotations

import sys

import click

from defake_pipeline.core.errors import DefakeError
from defake_pipeline.core.paths import HomeLayout


class DefakeGroup(click.Group):
    """Shows a DefakeError as one line on stderr (exit 2), never as a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DefakeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=DefakeGroup)
def main() -> None:
    """Evaluate multimodal LLMs as detectors of AI-generated images."""


@main.command()
@click.option("-m", "--model", "models", multiple=True, help="Model name (repeatable). Default: models.toml's registered list.")
@click.option("-p", "--prompt", "prompts", multiple=True, help="Prompt name or path (repeatable). Default: every prompt file.")
def materialize(models: tuple[str, ...], prompts: tuple[str, ...]) -> None:
    """Materialize the asset graph for the chosen model × prompt partitions on the local Dagster instance."""
    from defake_pipeline.core.models import get_model, registered_models
    from defake_pipeline.core.prompts import find_prompt, load_prompt, prompt_files
    from defake_pipeline.defs.instance import local_instance
    from defake_pipeline.defs.runs import materialize_evaluation

    model_keys = [get_model(m).key for m in (models or registered_models())]
    prompt_paths = [find_prompt(p) for p in prompts] if prompts else prompt_files()
    prompt_keys = list(dict.fromkeys(load_prompt(p).key for p in prompt_paths))
    click.echo(f"materializing {len(model_keys)} model(s) × {len(prompt_keys)} prompt(s): "
               f"{', '.join(model_keys)} × {', '.join(prompt_keys)}", err=True)
    materialize_evaluation(local_instance(), model_keys, prompt_keys)
    layout = HomeLayout()
    click.echo(layout.leaderboard_file.read_text(encoding="utf-8"))
    for m in model_keys:
        for p in prompt_keys:
            click.echo(f"report: {layout.report_file(m, p)}")
    click.echo(f"warehouse: {layout.warehouse}")


if __name__ == "__main__":
    main()
