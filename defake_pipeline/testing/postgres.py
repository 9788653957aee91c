"""A real PostgreSQL server for tests and benchmarks: ``initdb`` in a temporary folder and
``postgres`` on a free loopback port, stopped and removed on exit.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user that
Debian's package creates (in a folder of its own, since pytest's folders are root's only).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2

from defake_pipeline.testing.live import free_port

SUPERUSER = "defake"


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise FileNotFoundError(f"{name} not found: install Debian's postgresql package")
    return found


class PostgresServer:
    """``with PostgresServer(password) as pg: pg.url("db")``."""

    def __init__(self, password: str):
        self.password = password
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="defake-pg-"))
        self.user = "postgres" if os.geteuid() == 0 else None
        self.proc: subprocess.Popen | None = None

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        return f"postgresql://{SUPERUSER}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        data = self.folder / "data"
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user:
            shutil.chown(self.folder, self.user)
            shutil.chown(pwfile, self.user)
        initdb = [_bin("initdb"), "-D", str(data), "-U", SUPERUSER, "-E", "UTF8", "--auth=scram-sha-256"]
        subprocess.run(
            [*initdb, f"--pwfile={pwfile}"],
            user=self.user,
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
        self.log = (self.folder / "server.log").open("w")
        self.proc = subprocess.Popen(
            [
                _bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.folder),
                "-c",
                "max_connections=200",
                "-c",
                "fsync=off",  # a test server: durability across a power cut is not what is tested
            ],
            user=self.user,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                psycopg2.connect(self.url(), connect_timeout=2).close()
                return self
            except psycopg2.OperationalError:
                time.sleep(0.1)
        log = (self.folder / "server.log").read_text()
        self.__exit__()
        raise RuntimeError(f"PostgreSQL did not start: {log}")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for clients
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
