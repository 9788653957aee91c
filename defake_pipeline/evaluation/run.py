"""The one road into an evaluation, taken by ``classify``, ``infer`` and the ``predictions`` asset."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from defake_pipeline.datasets.layouts import LabeledImage
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.errors import CostCapError
from defake_pipeline.evaluation.engine import evaluate, make_evaluator
from defake_pipeline.evaluation.estimate import estimate_jobs
from defake_pipeline.evaluation.journal import ResponseJournal, open_journal
from defake_pipeline.evaluation.stopping import stoppable
from defake_pipeline.imaging.probe import probe_image
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import ImageJob, Prediction, job_key
from defake_pipeline.warehouse.layout import HomeLayout


def probed_jobs(images: Iterable[LabeledImage]) -> Iterator[ImageJob]:
    """Jobs for images that no manifest lists (``classify``, ``infer``): each is probed as the
    engine takes it, so the first requests go out before the last image is read."""
    for image in images:
        probe = probe_image(image.path)
        yield ImageJob(image.path, job_key(probe.sha256, str(image.path)), image.label, probe.error)


async def evaluate_jobs(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt | None,
    jobs: Iterable[ImageJob],
    on_result: Callable[[Prediction], None],
    *,
    api_key: str | None = None,
    max_cost_usd: float | None = None,
) -> list[str]:
    """Evaluate every job with one model × prompt against the journal under ``layout``; each
    prediction goes to ``on_result`` the moment it is made. Returns what the run's user should
    hear of (see ``Evaluator.notices``)."""
    if max_cost_usd is not None and prompt is not None and spec.backend != "baseline":
        # The cap is held against what the whole run may cost before anything is sent, so a run
        # that would pass it does not stop half-way, having spent; the budget below still
        # guards what is actually spent.
        jobs = list(jobs)
        estimate = await estimate_jobs(layout, spec, prompt, jobs, api_key)
        if estimate.usd > max_cost_usd:
            raise CostCapError(
                f"--max-cost ${max_cost_usd:.4f} is below what this run may cost; nothing was sent: {estimate.line()}"
            )
    journal = open_journal(layout.journal_url) if layout.journal_url else ResponseJournal(layout.journal)
    try:
        evaluator = make_evaluator(spec, prompt, journal, api_key, max_cost_usd)
        await evaluate(jobs, evaluator, on_result=on_result, collect=False)
        return evaluator.notices
    finally:
        journal.close()


run_evaluation = stoppable(evaluate_jobs)
