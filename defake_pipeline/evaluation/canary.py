"""Drift canaries: a hosted model may change under a fixed name, so a small fixed sample of a
partition's images is asked again, bypassing the journal, and compared with the answers the
partition publishes.

The sample is chosen by a hash of each image's key, so successive nights ask about the same
images: ``canary_share`` of them (2% by default), at least ``canary_min`` (20). A partition has
drifted when the share of agreeing verdicts falls under ``canary_agreement`` (0.9), or when a
snapshot answered that had not answered the partition before. With ``on_drift = "reevaluate"``
the partition begins a new cache generation: its requests get new keys, so the next run asks
every image again; the old answers stay in the journal.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.evaluation.engine import ChatEvaluator, evaluate
from defake_pipeline.evaluation.journal import AnswerKey, JournalEntry, layout_journal
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import ImageJob, Prediction
from defake_pipeline.warehouse.layout import HomeLayout


def canary_sample(keys: Iterable[str], share: float, minimum: int) -> list[str]:
    """The same images night after night: the first by a hash of each key, ``share`` of them
    and at least ``minimum`` (all of them, where there are fewer)."""
    ordered = sorted(set(keys), key=lambda k: hashlib.sha256(f"canary:{k}".encode()).hexdigest())
    return ordered[: max(minimum, math.ceil(share * len(ordered)))]


class CanaryEvaluator(ChatEvaluator):
    """A chat evaluator that asks every request again, whatever the journal holds, and keeps the
    answers out of the journal: what is published stays what the partition's runs asked."""

    async def _answer(self, wire: list[dict], key: AnswerKey, params: dict) -> tuple[JournalEntry, bool]:
        return await self._ask(wire, params), True


@dataclass
class CanaryResult:
    partition: str
    sampled: int
    compared: int  # images with a verdict both now and in the partition
    agreement: float | None
    snapshots_before: list[str]
    snapshots_now: list[str]
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    threshold: float
    errors: list[str] = field(default_factory=list)

    @property
    def snapshot_changed(self) -> bool:
        """A snapshot answered that had not before. Answers journaled before snapshots were
        recorded name none: they are compared by agreement alone, not called drifted (which,
        with on_drift = "reevaluate", would re-ask every such partition after an upgrade)."""
        return bool(self.snapshots_before) and bool(set(self.snapshots_now) - set(self.snapshots_before))

    @property
    def unanswered(self) -> bool:
        """Not one answer came back to compare (an endpoint down, say)."""
        return self.compared == 0 and (self.sampled > 0 or bool(self.errors))

    @property
    def changed(self) -> bool:
        """The answers or the snapshot changed: the model is not what answered the partition."""
        low = self.agreement is not None and self.agreement < self.threshold
        return low or self.snapshot_changed

    @property
    def drifted(self) -> bool:
        """What fails the check: a change, or no answer to tell one by."""
        return self.changed or self.unanswered

    def reason(self) -> str:
        parts = [f"no answer to compare ({'; '.join(self.errors) or 'no verdict'})"] if self.unanswered else []
        if self.agreement is not None and self.agreement < self.threshold:
            parts.append(f"agreement {self.agreement:.3f} < {self.threshold:g}")
        if self.snapshot_changed:
            new = ", ".join(sorted(set(self.snapshots_now) - set(self.snapshots_before)))
            parts.append(f"new snapshot {new} (before: {', '.join(self.snapshots_before) or 'not recorded'})")
        return "; ".join(parts)


async def run_canary(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt,
    jobs: list[ImageJob],
    published: pd.DataFrame,
    api_key: str | None,
    partition: str,
) -> CanaryResult:
    """Ask the canary sample of ``jobs`` again and compare with ``published`` (the partition's
    rows: image_sha256, verdict, error, served_model)."""
    valid = published[published["error"].isna() & (published["verdict"] != "unknown")]
    answered_before = set(valid["image_sha256"])
    by_key = {job.key: job for job in jobs if job.key in answered_before}
    sample = [by_key[key] for key in canary_sample(by_key, spec.canary_share, spec.canary_min)]
    journal = layout_journal(layout)
    fresh: list[Prediction] = []
    try:
        evaluator = CanaryEvaluator(spec, prompt, journal, api_key)
        await evaluate(sample, evaluator, on_result=fresh.append, collect=False)
    finally:
        journal.close()
    before = valid.drop_duplicates("image_sha256").set_index("image_sha256")
    served_before = before["served_model"] if "served_model" in before else pd.Series(dtype=object)
    answered = [p for p in fresh if p.error is None and p.verdict != "unknown"]
    agree = [p.verdict == before.at[p.image_sha256, "verdict"] for p in answered]
    return CanaryResult(
        partition=partition,
        sampled=len(sample),
        compared=len(agree),
        agreement=sum(agree) / len(agree) if agree else None,
        snapshots_before=sorted({str(s) for s in served_before.reindex([p.image_sha256 for p in fresh]).dropna()}),
        snapshots_now=sorted({p.served_model for p in fresh if p.served_model}),
        requests=sum(p.n_requests for p in fresh),
        input_tokens=sum(p.prompt_tokens for p in fresh),
        output_tokens=sum(p.completion_tokens for p in fresh),
        cost_usd=sum(p.cost_usd for p in fresh),
        threshold=spec.canary_agreement,
        errors=sorted({p.error for p in fresh if p.error})[:3],
    )
