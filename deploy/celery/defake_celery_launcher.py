"""The deployment's run launcher: dagster-celery's, with a health check that notices a lost worker.

dagster-celery reads a run's health from its task's state in the result backend. A worker killed
outright (SIGKILL, a lost machine or pod) never updates that state, so its run would read as
running for ever. Here a run whose task is STARTED counts as running only while the worker that
took it answers a ping. Otherwise Dagster's run monitoring (``run_monitoring`` in
deploy/dagster.yaml) fails the run and its run retries launch it again, on another worker: the
answers the lost worker bought are in the journal, and its leases expire.

It lives beside the Celery settings, on the image's PYTHONPATH, for the daemon to load.
"""

from __future__ import annotations

from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

# A worker busy with a run still answers: its main process takes control messages while the
# pool's process runs the task.
PING_TIMEOUT_S = 5.0


class CeleryRunLauncherWithLostWorkers(CeleryRunLauncher):
    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        health = super().check_run_worker_health(run)
        if health.status != WorkerStatus.RUNNING:
            return health
        started = self.celery.AsyncResult(run.tags[DAGSTER_CELERY_TASK_ID_TAG]).info
        worker = started.get("hostname") if isinstance(started, dict) else None
        if worker and not self.celery.control.ping(destination=[worker], timeout=PING_TIMEOUT_S):
            return CheckRunHealthResult(WorkerStatus.FAILED, f"Celery worker {worker} does not answer a ping.")
        return health
