"""Celery settings of the deployment's workers, read from the environment.

``dagster_celery.app`` imports a module of this name when it is on PYTHONPATH (the worker image
puts deploy/celery there). Reading the URLs here, rather than from a file that
``dagster-celery worker start`` would write, keeps a broker password out of every file.
"""

import os

broker_url = os.environ["DAGSTER_CELERY_BROKER_URL"]
result_backend = os.environ.get("DAGSTER_CELERY_BACKEND_URL", broker_url)
# One run at a time per worker process, taken only when the process is free: runs last
# minutes, so a worker must not hold runs that another, idle worker could start.
worker_prefetch_multiplier = 1
task_acks_late = True
