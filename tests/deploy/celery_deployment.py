"""The scaled deployment, started for real from deploy/: PostgreSQL (instance and journal), an
S3-compatible store (DEFAKE_HOME), redis (Celery's broker), the Dagster daemon with the shipped
dagster.yaml, and Celery workers each in an empty folder with its own HOME and TMPDIR."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import PLANTED_PASSWORD, REPO, real_fake_dataset
from defake_pipeline.testing.live import free_port

BIN = Path(sys.executable).parent
# How a worker and the code server start, here as in deploy/ (tests/deploy/test_deploy_files.py
# holds them equal). The daemon and every `dagster` command reach the definitions through that
# one code server, as deploy/workspace.yaml has them do.
WORKER_COMMAND = ["celery", "-A", "dagster_celery.app", "worker", "-Q", "dagster", "-c", "1"]
CODE_SERVER_COMMAND = ["dagster", "api", "grpc", "-m", "defake_pipeline.definitions"]


def make_project(root: Path, n_per_class: int, prompts: int) -> Path:
    """A project with one chat model, ``prompts`` prompts and a dataset of 2 × n_per_class images."""
    project = root / "project"
    (project / "prompts").mkdir(parents=True)
    # Short timeouts: a lease the killed worker held expires after (3 + 1) × 2 = 8 s.
    (project / "models.toml").write_text(
        'registered = ["vlm"]\n[models.vlm]\npreset = "vllm"\nconcurrency = 16\n'
        "timeout_s = 3\nmax_retries = 1\nmax_retry_wait_s = 1\n"
    )
    base = json.loads((REPO / "prompts" / "simple.json").read_text())
    for i in range(prompts):
        prompt = json.loads(json.dumps(base))
        prompt["name"] = f"ask{i}"
        prompt["conversations"][0]["payload"][1][1] = f"Real or generated? ({i})"
        (project / "prompts" / f"ask{i}.json").write_text(json.dumps(prompt))
    real_fake_dataset(project, "big", n_per_class)
    return project


class Deployment:
    def __init__(self, root: Path, project: Path, postgres, s3, redis, chat_server):
        self.root = root
        self.dagster_home = root / "dagster_home"  # the image's read-only config, as mounted
        self.dagster_home.mkdir()
        shutil.copy(REPO / "deploy" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        postgres.create_database("dagster")
        self.journal_url = postgres.create_database("journal")
        self.instance_url = postgres.url("dagster")
        self.s3 = s3
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFAKE_", "OPENAI_"))}
        self.env.update(
            s3.env,
            DAGSTER_HOME=str(self.dagster_home),
            DAGSTER_POSTGRES_HOST="127.0.0.1",
            DAGSTER_POSTGRES_PORT=str(postgres.port),
            DAGSTER_POSTGRES_USER="defake",
            DAGSTER_POSTGRES_PASSWORD=PLANTED_PASSWORD,
            DAGSTER_POSTGRES_DB="dagster",
            DAGSTER_CELERY_BROKER_URL=redis.url,
            DAGSTER_CELERY_BACKEND_URL=redis.url,
            DEFAKE_HOME=s3.url("live"),
            DEFAKE_JOURNAL_URL=self.journal_url,
            DEFAKE_PARTITIONS_PER_RUN="1",
            DEFAKE_PROJECT=str(project),
            BASE_URL=chat_server.base_url,
            PYTHONPATH=str(REPO / "deploy" / "celery"),
        )
        self.workers: dict[str, subprocess.Popen] = {}
        self.daemon: subprocess.Popen | None = None
        self.code_server: subprocess.Popen | None = None
        self.workspace = ["-w", str(root / "workspace.yaml")]

    def dagster(self, *args: str) -> str:
        proc = subprocess.run(
            [str(BIN / "dagster"), *args, *self.workspace],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def start_code_server(self) -> None:
        port = free_port()
        (self.root / "workspace.yaml").write_text(
            "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
            f"      port: {port}\n      location_name: defake_pipeline\n"
        )
        log = (self.root / "code_server.log").open("w")
        command = [str(BIN / CODE_SERVER_COMMAND[0]), *CODE_SERVER_COMMAND[1:], "-h", "127.0.0.1", "-p", str(port)]
        self.code_server = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode:
            assert self.code_server.poll() is None and time.monotonic() < deadline, (
                self.root / "code_server.log"
            ).read_text()
            time.sleep(1)

    def start_daemon(self) -> None:
        self.start_code_server()
        # The backfill is what is tested: the sensors that would start runs of their own are off.
        for sensor in ("automation_sensor", "new_images_sensor"):
            self.dagster("sensor", "stop", sensor)
        self.dagster("schedule", "stop", "nightly_reevaluation")
        log = (self.root / "daemon.log").open("w")
        self.daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", *self.workspace], cwd=REPO, env=self.env, stdout=log, stderr=log
        )

    def start_worker(self, name: str) -> Path:
        folder = self.root / name
        (folder / "tmp").mkdir(parents=True)
        env = dict(self.env, HOME=str(folder), TMPDIR=str(folder / "tmp"))
        log = (folder / "worker.log").open("w")
        command = [str(BIN / WORKER_COMMAND[0]), *WORKER_COMMAND[1:], "-n", f"{name}@%h", "--loglevel", "INFO"]
        # A session of its own: killing it takes the pool's process too, as losing a machine would.
        self.workers[name] = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=log, start_new_session=True
        )
        return folder

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def worker_log(self, name: str) -> str:
        return (self.root / name / "worker.log").read_text(errors="replace")

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)

    def runs(self, job: str) -> list[tuple[str, str]]:
        """(run id, status) of every run of a job."""
        import psycopg2

        conn = psycopg2.connect(self.instance_url)
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs WHERE pipeline_name = %s", (job,))
            rows = cur.fetchall()
        conn.close()
        return rows

    def wait_runs(self, job: str, n_succeeded: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = [s for _, s in self.runs(job)]
            assert "FAILURE" not in statuses, self.logs()
            if statuses.count("SUCCESS") >= n_succeeded:
                return
            time.sleep(1)
        raise AssertionError(f"{job}: {n_succeeded} runs did not succeed in time: {self.logs()}")

    def logs(self) -> str:
        parts = [(self.root / "daemon.log").read_text(errors="replace")[-3000:]]
        parts += [self.worker_log(name)[-3000:] for name in self.workers]
        return "\n---\n".join(parts)

    def stop(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        for proc in (self.daemon, self.code_server):
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
