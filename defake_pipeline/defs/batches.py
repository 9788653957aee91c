"""Batches: ``batches_sensor`` watches the batches that prediction runs sent (``--batch``, or
``batch = true`` in a model entry) and runs each partition again once its batches have ended."""

import hashlib

import dagster as dg

from defake_pipeline.defs.jobs import evaluate_job
from defake_pipeline.defs.partitions import partition_exists
from defake_pipeline.defs.predictions import PredictionsConfig
from defake_pipeline.defs.resources import ModelEndpoint
from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.evaluation.openai_batches import BatchPoll, poll_open_batches
from defake_pipeline.settings import load_settings
from defake_pipeline.warehouse.layout import HomeLayout

BATCH_POLL_S = load_settings().DEFAKE_BATCH_POLL_S


def _line(poll: BatchPoll) -> str:
    r, o = poll.record, poll.outcome
    if poll.problem:
        return f"{r.batch_id} ({r.partition_key}): not looked at in full ({poll.problem}); looked at again next tick"
    if o is None:
        return f"{r.batch_id} ({r.partition_key}): {r.progress()}"
    return (
        f"{r.batch_id} ({r.partition_key}): ended; {o.answered} answers journaled (${o.cost_usd:.4f}), "
        f"{o.failed} failed, {o.unreached} not reached"
    )


@dg.sensor(job=evaluate_job, minimum_interval_seconds=BATCH_POLL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def batches_sensor(context: dg.SensorEvaluationContext):
    """Look at every open batch. When one ends, its answers go to the journal (its errors are
    asked again in the next round), and once no batch of its partition is open, the partition
    runs again in batch mode: it finds every answer journaled and sends nothing directly."""
    endpoint = ModelEndpoint()
    polls = poll_open_batches(HomeLayout(), lambda name: endpoint.spec(get_model(name)), endpoint.key())
    for poll in polls:
        context.log.info(_line(poll))
    still_open = {p.record.partition_key for p in polls if p.outcome is None}
    ended: dict[str, list[str]] = {}
    for poll in polls:
        if poll.outcome is not None and poll.record.partition_key not in still_open:
            ended.setdefault(poll.record.partition_key, []).append(poll.record.batch_id)
    if not polls:
        return dg.SkipReason("no open batch")
    requests = [
        dg.RunRequest(
            # One run for the batches that ended: a reset cursor or a second look never asks twice.
            run_key=f"batches:{hashlib.sha256(','.join(sorted(ids)).encode()).hexdigest()[:16]}",
            partition_key=key,
            run_config=dg.RunConfig(ops={"predictions": PredictionsConfig(batch=True)}),
            tags={"defake/trigger": "batches_ended", "defake/batches": ",".join(sorted(ids))[:200]},
        )
        for key, ids in ended.items()
        # A partition removed meanwhile (its model or prompt unregistered) keeps its answers.
        if partition_exists(context.instance, key)
    ]
    summary = "; ".join(_line(p) for p in polls)
    return dg.SensorResult(run_requests=requests, skip_reason=None if requests else summary[:1000])
