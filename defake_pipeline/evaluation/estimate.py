"""What a run would cost, found by walking the run's own road without sending anything.

The estimating evaluator renders every request as a run would (decorators, prompt, encoded
image) and looks each up in the journal. A request the journal can answer is free. Any other
is a miss, counted with its input tokens (``endpoints.tokens``: text at 4 characters a token,
each image by the model's own rule, as OpenAI counts them) and its whole output allowance. A
later turn of a conversation holds the earlier answers, which are not known before they are
asked: they are counted apart, each at its whole allowance. The dollars are an upper bound.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from defake_pipeline.datasets.layouts import DatasetSpec
from defake_pipeline.datasets.manifest import current_manifest, jobs_from_manifest
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.endpoints.tokens import request_tokens
from defake_pipeline.errors import DefakeError
from defake_pipeline.evaluation.batch_records import open_batch_keys
from defake_pipeline.evaluation.engine import ChatEvaluator, evaluate
from defake_pipeline.evaluation.generations import partition_generation
from defake_pipeline.evaluation.journal import AnswerKey, Journal, JournalEntry, layout_journal
from defake_pipeline.evaluation.lazy_image import encode_images, lazy_images
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import ImageJob
from defake_pipeline.warehouse.layout import HomeLayout


@dataclass(frozen=True)
class CostEstimate:
    model: str
    prompt: str
    images: int
    images_to_ask: int  # images with at least one request the journal cannot answer
    requests: int  # requests to send: the journal's misses
    answered: int  # requests the journal answers, free
    in_batches: int  # requests open batches hold: paid there, and not sent again
    input_tokens: int  # the requests as rendered now, earlier answers of a conversation left empty
    carried_tokens: int  # at most this many more: those earlier answers, carried into later turns
    output_tokens: int  # the output allowance of every request to send: at most this many
    usd: float  # at most this much, at the model's prices
    batch_usd: float  # at most this much through the Batch API (``batch_discount`` of usd)
    priced: bool  # whether models.toml gives the model a price

    def line(self) -> str:
        carried = (
            f" (+ up to {self.carried_tokens:,} for earlier answers in later turns)" if self.carried_tokens else ""
        )
        cost = f"at most ${self.usd:.4f}" + ("" if self.priced else " (no price is set for this model)")
        if self.batch_usd < self.usd:
            cost += f", or ${self.batch_usd:.4f} through the Batch API (--batch)"
        return (
            f"{self.model} × {self.prompt}: {self.images} images, {self.requests} requests to send "
            f"for {self.images_to_ask} of them ({self.answered} answered before, free"
            f"{f'; {self.in_batches} in open batches, paid there' if self.in_batches else ''}); "
            f"{self.input_tokens:,} input tokens{carried} + up to {self.output_tokens:,} output tokens; {cost}"
        )


async def setup_offline(evaluator: ChatEvaluator, setup: Callable[[], Awaitable[None]]) -> None:
    """``setup`` for a run that sends nothing now. The served id is part of every answer's key:
    asking the endpoint for it is free, and where it cannot be asked (a vLLM server not started
    yet), the id recorded by the last run stands in for it."""
    recorded = evaluator.journal.served_id(evaluator.backend.endpoint, evaluator.spec.name)
    try:
        await setup()
    except DefakeError:
        if recorded is None:
            raise
        evaluator.backend.use_model_id(recorded)
        evaluator.model_id = recorded


class EstimatingEvaluator(ChatEvaluator):
    """A chat evaluator that asks nothing: each journal miss is counted and given an empty answer."""

    def __init__(
        self,
        spec: ModelSpec,
        prompt: LoadedPrompt,
        journal: Journal,
        api_key: str | None = None,
        generation: int = 0,
        held: set[AnswerKey] | None = None,
    ):
        # No request is paid for, so none needs a key; one given is used to ask for the served id.
        super().__init__(
            spec, prompt, journal, api_key or "no-key-needed-to-estimate", generation=generation, held=held
        )
        self.turns: Counter[str] = Counter()  # requests counted so far for each image
        self.images_to_ask: set[str] = set()
        self.requests = self.answered = self.in_batches = self.input_tokens = self.carried_tokens = 0

    async def setup(self) -> None:
        await setup_offline(self, super().setup)

    async def _answer(self, wire: list[dict], key: AnswerKey, params: dict) -> tuple[JournalEntry, bool]:
        earlier_turns = self.turns[key.image_sha256]
        self.turns[key.image_sha256] += 1
        entry = await asyncio.to_thread(self.journal.get, key)
        if entry is not None:
            self.answered += 1
            return entry, False
        if key in self.held:
            self.in_batches += 1
            return JournalEntry("", 0, 0, 0.0, None), False
        await asyncio.to_thread(encode_images, lazy_images(wire))
        tokens = request_tokens(wire, 0, self.spec.image_patch_px)
        self.requests += 1
        self.input_tokens += tokens
        self.carried_tokens += earlier_turns * self.spec.max_tokens
        self.images_to_ask.add(key.image_sha256)
        return JournalEntry("", tokens, self.spec.max_tokens, 0.0, None), False


async def estimate_jobs(
    layout: HomeLayout, spec: ModelSpec, prompt: LoadedPrompt, jobs: Iterable[ImageJob], api_key: str | None = None
) -> CostEstimate:
    """What evaluating ``jobs`` with this model × prompt would send and cost now."""
    listed = list(jobs)
    journal = layout_journal(layout)
    try:
        held = await asyncio.to_thread(open_batch_keys, layout)
        evaluator = EstimatingEvaluator(
            spec, prompt, journal, api_key, partition_generation(layout, spec, prompt), held
        )
        await evaluate(listed, evaluator, collect=False)
    finally:
        journal.close()
    output_tokens = evaluator.requests * spec.max_tokens
    return CostEstimate(
        model=spec.name,
        prompt=prompt.key,
        images=len(listed),
        images_to_ask=len(evaluator.images_to_ask),
        requests=evaluator.requests,
        answered=evaluator.answered,
        in_batches=evaluator.in_batches,
        input_tokens=evaluator.input_tokens,
        carried_tokens=evaluator.carried_tokens,
        output_tokens=output_tokens,
        usd=spec.cost_usd(evaluator.input_tokens + evaluator.carried_tokens, output_tokens),
        batch_usd=spec.cost_usd(evaluator.input_tokens + evaluator.carried_tokens, output_tokens, batch=True),
        priced=bool(spec.price_in or spec.price_out),
    )


def estimate_cost(
    layout: HomeLayout, spec: ModelSpec, prompt: LoadedPrompt, jobs: Iterable[ImageJob], api_key: str | None = None
) -> CostEstimate:
    return asyncio.run(estimate_jobs(layout, spec, prompt, jobs, api_key))


def estimate_datasets(
    layout: HomeLayout, spec: ModelSpec, prompt: LoadedPrompt, datasets: list[DatasetSpec], api_key: str | None = None
) -> CostEstimate:
    """What materializing a model × prompt on these datasets would send and cost now: their
    images as a rescan would find them (nothing is written), a content in two datasets asked once."""
    jobs = {job.key: job for ds in datasets for job in jobs_from_manifest(current_manifest(layout, ds))}
    return estimate_cost(layout, spec, prompt, jobs.values(), api_key)
