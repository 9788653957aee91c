"""A real S3-compatible server for tests: moto's HTTP server on a free loopback port, with one
bucket, reached through the standard AWS variables (``env``)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import s3fs

from defake_pipeline.testing.live import free_port


class S3Server:
    """``with S3Server(secret) as s3: s3.env`` (the variables a worker needs), ``s3.fs``."""

    def __init__(self, secret_key: str, bucket: str = "defake"):
        self.port = free_port()
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "defake-test",
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.proc: subprocess.Popen | None = None

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])

    def __enter__(self) -> S3Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("the S3-compatible test server did not start") from None
                time.sleep(0.1)
        self.fs = s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint,
            use_listings_cache=False,
        )
        self.fs.mkdir(self.bucket)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
