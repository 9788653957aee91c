"""A dry run of a predictions partition: what materializing it would send and cost now, as the
metadata of an observation of that partition. ``mllmdf estimate`` prints the same figures."""

import dagster as dg

from defake_pipeline.datasets.layouts import dataset_specs
from defake_pipeline.defs.partitions import partition_key
from defake_pipeline.defs.resources import DefakeHomeFolder, ModelEndpoint
from defake_pipeline.endpoints.registry import model_by_key
from defake_pipeline.evaluation.estimate import estimate_datasets
from defake_pipeline.prompting.spec import prompt_by_key


class EstimateConfig(dg.Config):
    model: str
    prompt: str
    datasets: list[str] = []  # empty: every dataset


@dg.op
def estimate_predictions(
    context: dg.OpExecutionContext, config: EstimateConfig, store: DefakeHomeFolder, endpoint: ModelEndpoint
) -> None:
    """Count the requests the journal cannot answer, their tokens and an upper bound in dollars;
    send nothing."""
    spec, prompt = endpoint.spec(model_by_key(config.model)), prompt_by_key(config.prompt)
    chosen = [ds for ds in dataset_specs() if not config.datasets or ds.key in config.datasets]
    figures = estimate_datasets(store.layout(), spec, prompt, chosen, endpoint.key())
    context.log.info(figures.line())
    context.log_event(
        dg.AssetObservation(
            asset_key="predictions",
            partition=partition_key(spec.key, prompt.key),
            description="a dry run: what materializing this partition would send and cost now",
            metadata={
                "images": figures.images,
                "requests_to_send": figures.requests,
                "answered_by_the_journal": figures.answered,
                "input_tokens": figures.input_tokens,
                "carried_answer_tokens_at_most": figures.carried_tokens,
                "output_tokens_at_most": figures.output_tokens,
                "usd_at_most": dg.MetadataValue.float(round(figures.usd, 6)),
                "usd_at_most_through_the_batch_api": dg.MetadataValue.float(round(figures.batch_usd, 6)),
                "datasets": ", ".join(ds.key for ds in chosen),
            },
        )
    )


@dg.job(description="A dry run of one predictions partition: its requests, tokens and cost, nothing sent.")
def estimate():
    estimate_predictions()
