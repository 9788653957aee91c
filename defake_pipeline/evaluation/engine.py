"""The evaluation engine: asks a model (or runs a baseline) about each image, concurrently.

One engine serves ``mllmdf infer``, ``mllmdf classify`` and the ``predictions`` asset.
Turns of a multi-conversation prompt run in order for one image; images run concurrently,
bounded by the model's concurrency. Every response goes to the journal as it arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from defake_pipeline.endpoints.budget import CostBudget
from defake_pipeline.endpoints.chat import ChatBackend, choose_served_id
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.endpoints.verdict_formats import asks_for_reasons, structured_verdict, verdict_params
from defake_pipeline.errors import DefakeError, PromptError
from defake_pipeline.evaluation.evaluator import WAITING, BaselineEvaluator, Evaluator, WaitingForBatch
from defake_pipeline.evaluation.journal import AnswerKey, Claim, Journal, JournalEntry, hash_request, journal_entry
from defake_pipeline.evaluation.lazy_image import LazyImage, encode_images, lazy_images
from defake_pipeline.evaluation.stopping import run_stoppable
from defake_pipeline.prompting.decorators import (
    DECORATOR_TIMEOUT_S,
    Decorator,
    call_decorator,
    resolve_decorators,
)
from defake_pipeline.prompting.spec import RESULT_VARIABLE, LoadedPrompt
from defake_pipeline.prompting.templating import TemplateError, render, sole_variable
from defake_pipeline.records import VERDICT_OF_PRED, ImageJob, Prediction

log = logging.getLogger(__name__)
_ERROR_MAX_CHARS = 500
_USAGE_ESTIMATED = "tokens and cost of those answers are estimated (text at 4 characters a token, images by rule)"
# How often a runner waiting for another runner's answer to the same request looks again.
LEASE_POLL_S = 0.1


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_MAX_CHARS]


class ChatEvaluator(Evaluator):
    """A v3 prompt run against an OpenAI-compatible chat endpoint."""

    prompt: LoadedPrompt  # always set for a chat model

    def __init__(
        self,
        spec: ModelSpec,
        prompt: LoadedPrompt,
        journal: Journal,
        api_key: str | None,
        budget: CostBudget | None = None,
        generation: int = 0,
        held: set[AnswerKey] | None = None,
    ):
        super().__init__(spec, prompt, journal)
        self.generation = generation  # a new cache generation gives every request a new key
        # Requests an open batch holds: asked again, they would be paid twice. Their images wait.
        self.held = held or set()
        self.decorators: dict[str, Decorator] = resolve_decorators(prompt)
        self.decorator_timeout_s = DECORATOR_TIMEOUT_S
        # A lease outlives the longest an image can take: every attempt at its deadline and
        # the longest wait between attempts (a dead runner's lease ends with its process).
        self.lease_ttl_s = (spec.timeout_s + spec.max_retry_wait_s) * (spec.max_retries + 1)
        self.backend = ChatBackend(spec, api_key)
        self.budget = budget
        # Request fields of every turn; the final turn's, whose answer is the verdict, carry the
        # model's verdict_format too (each is part of its turn's cache key).
        self.turn_params = self.backend.request_params()
        final_texts = [item.text for item in prompt.spec.conversations[-1].payload]
        self.final_params = self.turn_params | verdict_params(spec.verdict_format, asks_for_reasons(final_texts))

    async def setup(self) -> None:
        if self.spec.model:
            self.model_id = self.spec.model
            return
        # The served id is part of every answer's key: it is chosen by a stated rule
        # (``choose_served_id``), recorded, and a change is said, never silent.
        served = await self.backend.served_models()
        endpoint = self.backend.endpoint
        before = self.journal.served_id(endpoint, self.spec.name)
        where = f"{self.backend.where} for model {self.spec.name!r}"
        chosen, notice = choose_served_id(self.spec, served, before, where)
        if notice:
            self.notice(notice)
        if before != chosen:
            self.journal.record_served_id(endpoint, self.spec.name, chosen)
        self.backend.use_model_id(chosen)
        self.model_id = chosen

    async def close(self) -> None:
        await self.backend.aclose()

    def halt(self, reason: DefakeError) -> None:
        self.backend.halted = reason

    def _conversation_error(self, conv_id: str, exc: Exception) -> PromptError:
        return PromptError(f"{self.prompt.path}: conversation {conv_id!r}: {exc}")

    async def _run_decorators(self, conv, cache: dict) -> None:
        # Decorators see real data URLs (seed decorators decode cache["image_url"]);
        # whatever they add or replace is copied back. Encoding and the calls run off the loop.
        view = await asyncio.to_thread(
            lambda: {k: (v.data_url() if isinstance(v, LazyImage) else v) for k, v in cache.items()}
        )
        before = dict(view)
        for name in conv.decorators:
            await call_decorator(self.decorators[name], view, name, self.decorator_timeout_s)
        for key, value in view.items():
            if key not in before or before[key] is not value:
                cache[key] = value

    def _render(self, conv, cache: dict) -> list[dict]:
        messages: list[dict] = []
        try:
            for item in conv.payload:
                text = render(item.text, cache)
                if item.role != "user":
                    messages.append({"role": item.role, "content": text})
                    continue
                content: list[dict] = [{"type": "text", "text": text}]
                if item.image is not None:
                    # An image slot naming one variable takes its value as it is (a LazyImage is
                    # encoded only when sent); anything else renders as text.
                    var = sole_variable(item.image)
                    value = cache.get(var) if var else None
                    url = value if isinstance(value, LazyImage) else render(item.image, cache)
                    image: dict = {"url": url}
                    if self.spec.detail:
                        image["detail"] = self.spec.detail
                    content.append({"type": "image_url", "image_url": image})
                messages.append({"role": "user", "content": content})
        except TemplateError as exc:
            raise self._conversation_error(conv.id, exc) from None
        return messages

    async def predict(self, job: ImageJob) -> Prediction:
        try:
            return await self._predict(job)
        except WaitingForBatch:
            self.waiting += 1
            return self.error_prediction(job, WAITING)

    async def _predict(self, job: ImageJob) -> Prediction:
        cache: dict = {
            "_image_path": job.path,
            "image_url": LazyImage(job, self.spec.encoding_policy),
            "label": VERDICT_OF_PRED.get(job.label, "unknown"),
        }
        turns: list[str] = []
        score, verdict, refused, final = None, None, False, {}
        latency_s = 0.0
        counts = {"prompt_tokens": 0, "completion_tokens": 0, "n_requests": 0}
        cost = 0.0
        for conv in self.prompt.spec.conversations:
            if conv.decorators:
                await self._run_decorators(conv, cache)
            wire = self.backend.wire_messages(self._render(conv, cache))
            params = self.final_params if conv.response_var_name == RESULT_VARIABLE else self.turn_params
            request = {"model": self.model_id, "messages": wire, **params}
            if self.generation:
                request["cache_generation"] = self.generation
            request_hash = hash_request(request)
            key = AnswerKey(self.backend.endpoint, self.model_id, request_hash, job.key)
            entry, asked = await self._answer(wire, key, params)
            counts["n_requests"] += asked
            if conv.response_var_name == RESULT_VARIABLE:
                final = entry.extra or {}
                score = final.get("score_fake")
                # Read before a long answer was capped, or from the constrained answer.
                verdict = final.get("verdict") or structured_verdict(self.spec.verdict_format, entry.response)
                refused = bool(final.get("refusal"))
            cache[conv.response_var_name] = entry.response
            turns.append(entry.response)
            latency_s += entry.latency_s
            counts["prompt_tokens"] += entry.prompt_tokens
            counts["completion_tokens"] += entry.completion_tokens
            # An answer from a batch file is priced at the batch price.
            batched = bool((entry.extra or {}).get("batch"))
            cost += self.spec.cost_usd(entry.prompt_tokens, entry.completion_tokens, batched)
        response = str(cache[RESULT_VARIABLE])
        return self.prediction(
            job,
            response,
            verdict,
            turns=turns,
            score=score,
            cost_usd=cost,
            latency_s=latency_s,
            refused=refused,
            served_model=final.get("served_model"),
            system_fingerprint=final.get("fingerprint"),
            verdict_format=self.spec.verdict_format,
            cache_generation=self.generation,
            **counts,
        )

    async def _answer(self, wire: list[dict], key: AnswerKey, params: dict) -> tuple[JournalEntry, bool]:
        """The answer to one request, and whether this runner paid for it: while a request for
        the same key is in flight (another runner's, or this one's for a copy of the image),
        wait for its answer instead."""
        # Journal calls run beside the event loop: on it, a Postgres journal's 0.5 ms round trips
        # cost 14% of throughput at 64 requests in flight (benchmarks/engine_bench.py, journal_c64).
        while True:
            claimed = await asyncio.to_thread(self.journal.claim, key, self.lease_ttl_s)
            if isinstance(claimed, JournalEntry):
                return claimed, False
            if claimed is Claim.ASK:
                break
            await asyncio.sleep(LEASE_POLL_S)
        if key in self.held:
            self.journal.release(key)
            raise WaitingForBatch
        try:
            entry = await self._ask(wire, params)
        except BaseException:
            self.journal.release(key)
            raise
        await asyncio.to_thread(self.journal.put, key, entry)
        return entry, True

    async def _ask(self, wire: list[dict], params: dict) -> JournalEntry:
        """Send one request (within the budget, if any) and return its journal entry."""
        # Decoding and downscaling a large image takes tens of milliseconds: off the event loop.
        images = lazy_images(wire)
        if not all([image.encode_if_cheap() for image in images]):
            await asyncio.to_thread(encode_images, images)
        estimate = 0.0
        if self.budget:
            estimate = self.budget.estimate(self.spec, wire)
            self.budget.reserve(estimate)
        actual = 0.0
        try:
            reply = await self.backend.complete(wire, params)
            actual = self.spec.cost_usd(reply.prompt_tokens, reply.completion_tokens)
        finally:
            if self.budget:
                self.budget.settle(estimate, actual)
        if reply.usage_estimated:
            self.notice(f"{self.backend.where} sent a missing or invalid token usage; {_USAGE_ESTIMATED}")
        return journal_entry(self.spec, reply)


def make_evaluator(
    spec: ModelSpec,
    prompt: LoadedPrompt | None,
    journal: Journal,
    api_key: str | None = None,
    max_cost_usd: float | None = None,
    generation: int = 0,
    held: set[AnswerKey] | None = None,
) -> Evaluator:
    """The evaluator for a model: a baseline, or a prompt against a chat endpoint."""
    if spec.backend == "baseline":
        return BaselineEvaluator(spec, prompt, journal)
    if prompt is None:
        raise PromptError(f"model {spec.name!r} needs a prompt")
    budget = CostBudget(max_cost_usd) if max_cost_usd is not None else None
    return ChatEvaluator(spec, prompt, journal, api_key, budget, generation, held)


async def evaluate(
    jobs: Iterable[ImageJob],
    evaluator: Evaluator,
    *,
    concurrency: int | None = None,
    on_result: Callable[[Prediction], None] | None = None,
    collect: bool = True,
) -> list[Prediction]:
    """Evaluate every job; one bad image or failed request never stops the others. Workers
    pull from one iterator, so with ``collect=False`` (``on_result`` sees each prediction)
    memory holds only the images in flight. A DefakeError (a prompt that cannot render, a
    rejected key, an answer the journal cannot store) stops the run at once: it would fail
    every image the same way, or pay for answers that are then lost."""
    results: list[Prediction] = []
    fatal: list[DefakeError] = []
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            if fatal:
                return
            if job.probe_error:
                pred = evaluator.error_prediction(job, job.probe_error)
            else:
                try:
                    pred = await evaluator.predict(job)
                except DefakeError as exc:
                    fatal.append(exc)
                    evaluator.halt(exc)  # requests waiting for a slot are not sent
                    return
                except Exception as exc:  # noqa: BLE001 - per-image failures become error rows
                    pred = evaluator.error_prediction(job, _error_text(exc))
            if collect:
                results.append(pred)
            if on_result:
                on_result(pred)

    try:
        await evaluator.setup()
        # Unlike gather, a TaskGroup waits for every worker to unwind on cancellation, so the
        # evaluator closes after the last answer is journaled; a worker's error comes unwrapped.
        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(concurrency or evaluator.spec.concurrency):
                    workers.create_task(worker())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
    finally:
        await evaluator.close()
    if fatal:
        raise fatal[0]
    return results


def evaluate_sync(jobs: Iterable[ImageJob], evaluator: Evaluator, **kwargs) -> list[Prediction]:
    """``evaluate`` for callers without an event loop; SIGINT and SIGTERM stop it cleanly."""
    return run_stoppable(evaluate(jobs, evaluator, **kwargs))
