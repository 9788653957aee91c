"""Materializing the graph for chosen partitions on a given instance (used by the CLI).

Runs go through the named jobs of ``defs/jobs.py`` and carry ``defake/source=cli`` plus the
model and prompt, so the UI shows where each came from.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import dagster as dg

from defake_pipeline.cli.bars import PartitionBars, bars_in_this_process
from defake_pipeline.defs.baselines import BaselinesConfig
from defake_pipeline.defs.manifests import DatasetSelection, ManifestConfig
from defake_pipeline.defs.partitions import partition_key, register_partitions
from defake_pipeline.endpoints.registry import model_by_key
from defake_pipeline.errors import DefakeError, RunInterrupted
from defake_pipeline.warehouse.database import query

# Step-by-step DEBUG events belong in the UI; the terminal gets INFO and above.
_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
CLI_TAGS = {"defake/source": "cli"}


def _run_config(op: str | None, config: dg.Config | None) -> dg.RunConfig:
    """Quiet console logs, and the config of the asset that takes one."""
    ops = {op: config} if op and config is not None else {}
    return dg.RunConfig(ops=ops, loggers=_QUIET_CONSOLE["loggers"])


# The asset of each named job that takes a config (which datasets, which baselines).
_CONFIGURED_ASSET = {
    "refresh_manifests": "image_manifest",
    "evaluate": "predictions",
    "evaluate_baselines": "baseline_predictions",
}


def _execute(
    job_name: str,
    instance: dg.DagsterInstance,
    resources: dict | None,
    key: str | None = None,
    datasets: list[str] | None = None,
    tags: dict | None = None,
    config: dg.Config | None = None,
) -> dg.ExecuteInProcessResult:
    from defake_pipeline.definitions import defs

    job = defs.resolve_job_def(job_name)
    op = _CONFIGURED_ASSET.get(job_name)
    if config is None and op is not None:
        config = DatasetSelection(datasets=list(datasets or []))
    return job.execute_in_process(
        instance=instance,
        partition_key=key,
        run_config=_run_config(op, config),
        tags={**CLI_TAGS, **(tags or {})},
        resources=resources,
    )


def _partition_tags(key: dg.MultiPartitionKey) -> dict[str, str]:
    dims = key.keys_by_dimension
    return {"defake/model": dims["model"], "defake/prompt": dims["prompt"]}


def materialize_evaluation(
    instance: dg.DagsterInstance,
    models: list[str],
    prompts: list[str],
    resources: dict | None = None,
    datasets: list[str] | None = None,
    max_parallel: int = 1,
    rehash: bool = False,
) -> list[dg.ExecuteInProcessResult]:
    """Manifest, then the baselines among ``models`` (once: they read no prompt) and every other
    model × prompt partition, then the warehouse, reports and leaderboard.

    Each step is its own run of a named job, so all of them appear in the UI's run list. With
    ``max_parallel`` > 1 on a persistent instance, prediction partitions run in that many
    processes at once (they share only the journal, which takes concurrent writers). Either way
    their progress shows as one bar per partition on a terminal.
    """
    baselines = [m for m in models if model_by_key(m).backend == "baseline"]
    models = [m for m in models if m not in baselines]
    register_partitions(instance, models, prompts if models else [])
    keys = [partition_key(m, p) for m in models for p in prompts]
    rescan = ManifestConfig(datasets=list(datasets or []), rehash=rehash)
    in_processes = max_parallel > 1 and len(keys) > 1 and not instance.is_ephemeral and not resources
    with bars_in_this_process():
        results = [_execute("refresh_manifests", instance, resources, config=rescan)]
        if baselines:
            chosen = BaselinesConfig(models=baselines, datasets=list(datasets or []))
            results.append(_execute("evaluate_baselines", instance, resources, config=chosen))
        if not in_processes:
            results += [_execute("evaluate", instance, resources, k, datasets, _partition_tags(k)) for k in keys]
    if in_processes:
        _run_partitions_in_processes(keys, datasets or [], max_parallel)
    with bars_in_this_process():
        results.append(_execute("publish", instance, resources))
    return results


def publish(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """The warehouse, reports and leaderboard rebuilt from the partitions the instance has."""
    with bars_in_this_process():
        return _execute("publish", instance, None)


def _evaluate_in_worker(key: str, datasets: list[str]) -> str:
    """One predictions partition in a worker process, on the DAGSTER_HOME instance."""
    from defake_pipeline.defs.partitions import model_prompt_partitions

    multi_key = model_prompt_partitions.get_partition_key_from_str(key)
    _execute("evaluate", dg.DagsterInstance.get(), None, key, datasets, _partition_tags(multi_key))
    return key


class _Worker:
    """A partition evaluated in a child process of its own session: the terminal's Ctrl-C
    reaches only the parent, which relays the worker's log lines until it stops it."""

    def __init__(self, key: str, datasets: list[str], bars: PartitionBars):
        self.key = key
        self.bars = bars
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "defake_pipeline.cli.launch", key, *datasets],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.relaying = True
        self.last_line = ""
        self._relay = threading.Thread(target=self._relay_lines, daemon=True)
        self._relay.start()

    def _relay_lines(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.relaying:
                self.bars.relay(line)
                self.last_line = line.strip() or self.last_line

    def finish(self) -> str | None:
        """Wait for the worker; None, or its failure in one line."""
        code = self.proc.wait()
        self._relay.join()
        if code == 0:
            return None
        detail = self.last_line.removeprefix("error: ") or f"exited with code {code}"
        return f"partition {self.key}: {detail}"

    def stop(self) -> None:
        # Dagster maps SIGTERM to its own interrupt during a run: the run is recorded as
        # interrupted and the partition's temporary file removed. Its account stays off the terminal.
        self.relaying = False
        if self.proc.poll() is None:
            self.proc.terminate()


# How long stopped workers get to record the interruption before they are killed.
_WORKER_GRACE_S = 20.0


def _run_partitions_in_processes(keys: list[dg.MultiPartitionKey], datasets: list[str], max_parallel: int) -> None:
    """Run partitions in up to ``max_parallel`` worker processes. A worker's failure is raised
    once the others finish; SIGTERM or SIGINT to this process stops every worker at once."""
    todo, failures = [str(k) for k in keys], []
    running: list[_Worker] = []
    bars = PartitionBars()

    def interrupt(signum, _frame):
        raise RunInterrupted(signum, f" ({len(running)} running partition workers stopped)")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while todo or running:
            while todo and len(running) < max_parallel:
                running.append(_Worker(todo.pop(0), datasets, bars))
            done = next((w for w in running if w.proc.poll() is not None), None)
            if done is None:
                time.sleep(0.05)
                continue
            running.remove(done)
            if (failure := done.finish()) is not None:
                failures.append(failure)
    except BaseException:
        for s in previous:  # a second signal must not cut the workers' unwinding short
            signal.signal(s, signal.SIG_IGN)
        for worker in running:
            worker.stop()
        for worker in running:
            try:
                worker.proc.wait(_WORKER_GRACE_S)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
        raise
    finally:
        bars.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failures:
        raise DefakeError(failures[0])


def gate_failures(layout, pairs: list[tuple[str, str]]) -> list[str]:
    """One line per chosen partition that is not on the leaderboard, with the gate's reason."""
    gate = query(layout, "SELECT dataset, model, prompt, status, reason FROM partition_gate WHERE status <> 'passed'")
    wanted = set(pairs)
    return [
        f"{r.model}|{r.prompt} on {r.dataset}: quality gate {r.status}: {r.reason}"
        for r in gate.itertuples(index=False)
        if (r.model, r.prompt) in wanted
    ]


if __name__ == "__main__":  # a worker of _run_partitions_in_processes: KEY [DATASET ...]
    try:
        _evaluate_in_worker(sys.argv[1], sys.argv[2:])
    except DefakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
