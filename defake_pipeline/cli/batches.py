"""``mllmdf batches`` and ``mllmdf batch export|import``: batch evaluation from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from defake_pipeline.cli.app import endpoint_spec, main, print_line
from defake_pipeline.errors import DefakeError, UnreachableEndpointError
from defake_pipeline.settings import load_settings
from defake_pipeline.warehouse.layout import HomeLayout


@main.command()
@click.option("--all", "everything", is_flag=True, help="List every batch, not only the 20 newest.")
def batches(everything: bool) -> None:
    """Look at the open batches once (answers of those that ended go to the journal), then list
    open and finished batches with their counts and cost."""
    from defake_pipeline.evaluation.batch_records import BatchRecords
    from defake_pipeline.evaluation.openai_batches import poll_open_batches

    layout = HomeLayout()
    for poll in poll_open_batches(layout, endpoint_spec, load_settings().api_key):
        if poll.problem:
            print_line("warning", f"{poll.record.batch_id}: not looked at in full ({poll.problem})")
    records = BatchRecords(layout)
    try:
        listed = records.batches()
    finally:
        records.close()
    if not listed:
        click.echo("no batches (send some with `mllmdf infer --batch` or `mllmdf materialize --batch`)")
        return
    shown = listed if everything else listed[-20:]
    width = max(len(r.batch_id) for r in shown)
    click.echo(
        f"{'batch':<{width}}  {'partition':<24} {'status':<11} {'done':>13} {'failed':>7} {'cost $':>9}  created"
    )
    for r in shown:
        status = r.status if r.status != "open" else r.api_status
        done = f"{r.n_answered}/{r.n_requests}"
        click.echo(
            f"{r.batch_id:<{width}}  {r.partition_key:<24} {status:<11} {done:>13} {r.n_failed:>7} "
            f"{r.cost_usd:>9.4f}  {r.created_at}"
        )


@main.group()
def batch() -> None:
    """Batch files for self-hosted models: `export` for `vllm run-batch`, `import` of its output."""


@batch.command("export")
@click.option("-m", "--model", required=True, help="Model name.")
@click.option("-p", "--prompt", required=True, help="Prompt name or path.")
@click.option("-d", "--dataset", "datasets", multiple=True, help="Only these datasets (repeatable). Default: all.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The JSONL file to write.")
@click.option(
    "--served-id",
    default=None,
    help="The model id `vllm run-batch --model` will serve. Default: the id the server at BASE_URL "
    "serves, or the one it served last.",
)
def export(model: str, prompt: str, datasets: tuple[str, ...], output: str, served_id: str | None) -> None:
    """Write the requests the journal cannot answer as a `vllm run-batch` input file."""
    from defake_pipeline.datasets.layouts import defined_datasets, get_dataset
    from defake_pipeline.endpoints.chat import ids_of_model
    from defake_pipeline.evaluation.vllm_batches import export_batch
    from defake_pipeline.prompting.spec import find_prompt, load_prompt

    spec, loaded = endpoint_spec(model), load_prompt(find_prompt(prompt))
    if served_id:
        ids_of_model(spec, [served_id], "--served-id is")
        # The served id is part of each answer's key, as if asked of the server that will serve it.
        spec = spec.model_copy(update={"model": served_id})
    chosen = [get_dataset(d) for d in datasets] if datasets else defined_datasets()
    try:
        n, model_id = export_batch(HomeLayout(), spec, loaded, chosen, Path(output))
    except UnreachableEndpointError as exc:
        # run-batch needs no server: without one to ask, the id it will serve is the user's to give.
        raise DefakeError(f"{exc}; with no server running, name the id run-batch will serve with --served-id") from None
    click.echo(f"{n} requests → {output} (run: vllm run-batch -i {output} -o OUTPUT --model {model_id})")


@batch.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_(file: str) -> None:
    """Journal the answers of a `vllm run-batch` output FILE; the next run finds them."""
    from defake_pipeline.evaluation.vllm_batches import import_batch_file

    outcome = import_batch_file(HomeLayout(), endpoint_spec, Path(file))
    click.echo(
        f"{outcome.answered} answers journaled, {outcome.failed} errors, "
        f"{outcome.unreached} lines of no export recorded here"
    )
