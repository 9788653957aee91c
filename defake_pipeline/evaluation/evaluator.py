"""What every evaluator keeps (its model, prompt, journal, notices and waiting images) and how it
makes a prediction row; and the evaluator of a baseline, run here on the pixels."""

from __future__ import annotations

import logging
from dataclasses import replace

from defake_pipeline.endpoints.baselines import BASELINES, run_baseline
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.errors import DefakeError
from defake_pipeline.evaluation.journal import AnswerKey, Journal, JournalEntry
from defake_pipeline.imaging.probe import read_image_bytes
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import NO_PROMPT, PRED_OF_VERDICT, ImageJob, Prediction
from defake_pipeline.verdict import parse_verdict

log = logging.getLogger(__name__)


class Evaluator:
    """Shared bookkeeping of the evaluator kinds."""

    def __init__(self, spec: ModelSpec, prompt: LoadedPrompt | None, journal: Journal):
        self.spec = spec
        self.prompt = prompt
        self.journal = journal
        self.model_id = spec.model or spec.name
        # Things the run did that its user should hear of, each said once (and logged).
        self.notices: list[str] = []
        self.waiting = 0  # images whose answer an open batch will bring (they get no prediction)

    def notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            log.warning("%s", text)

    @property
    def prompt_key(self) -> str:
        return NO_PROMPT if self.spec.backend == "baseline" or self.prompt is None else self.prompt.key

    @property
    def prompt_hash(self) -> str:
        return NO_PROMPT if self.spec.backend == "baseline" or self.prompt is None else self.prompt.content_hash

    async def setup(self) -> None:
        """Anything that needs the endpoint once per run (such as the served model id)."""

    async def close(self) -> None:
        """Release connections."""

    def halt(self, reason: DefakeError) -> None:
        """Send nothing more: requests waiting for a slot fail with ``reason``."""

    async def predict(self, job: ImageJob) -> Prediction:
        raise NotImplementedError

    def prediction(self, job: ImageJob, response: str, verdict: str | None = None, **fields) -> Prediction:
        if fields.get("error") is not None:
            verdict = "unknown"
        elif verdict is None:
            verdict = parse_verdict(response)
        blank = Prediction(
            image_sha256=job.key,
            path=str(job.path),
            label=job.label,
            verdict=verdict,
            pred=PRED_OF_VERDICT[verdict],
            score=None,
            response=response,
            turns=[response] if response else [],
            latency_s=0.0,
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
            n_requests=0,
            refused=False,
            error=None,
            model=self.spec.key,
            model_id=self.model_id,
            prompt=self.prompt_key,
            prompt_hash=self.prompt_hash,
        )
        return replace(blank, **fields)

    def error_prediction(self, job: ImageJob, error: str) -> Prediction:
        """An image that got no answer: recorded as an error, never as a wrong answer."""
        return self.prediction(job, "", error=error)


WAITING = "waiting for its batch"  # the error text of an image whose answer an open batch will bring


class WaitingForBatch(Exception):
    """The image's next request is in a batch (sent now, or open before)."""


class BaselineEvaluator(Evaluator):
    """A detector run here on the pixels; its answers are journaled like a model's."""

    async def predict(self, job: ImageJob) -> Prediction:
        detector = self.spec.detector or self.spec.name
        request_hash = BASELINES[detector].version
        key = AnswerKey(f"local:{detector}", self.model_id, request_hash, job.key)
        entry = self.journal.get(key)
        n_requests = 0
        if entry is None:
            reply = await run_baseline(detector, read_image_bytes(job.path))
            entry = JournalEntry(reply.text, extra={"score_fake": reply.score_fake})
            self.journal.put(key, entry)
            n_requests = 1
        return self.prediction(job, entry.response, score=(entry.extra or {}).get("score_fake"), n_requests=n_requests)
