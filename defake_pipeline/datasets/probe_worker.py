"""Probing images in a worker process, ahead of whoever needs the probes.

``mllmdf infer`` probes each image (read, sha256, decode check) while its event loop sends
requests. In threads of the same process the two fought over the GIL: at 64 requests in flight
a 0.5 ms probe cost the run 1.3–1.6 ms of CPU an image and 6–16% of its throughput. One
worker process, fed chunks of paths through a pipe, costs the loop only reading the results.

The worker is ``python -m defake_pipeline.datasets.probe_worker``: chunks of paths come in on
its standard input and their probes go out on its standard output, pickled, in order. A plain
child process (not multiprocessing) re-runs nothing of the caller's main module and ends at
the end of its input, so it ends with its run however the run ends. A decoder that crashes on
a hostile file takes only the worker down: the chunk it was on is probed again one image at a
time in new workers, and the image that still kills one gets a probe error.
"""

from __future__ import annotations

import pickle
import select
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import BinaryIO

from defake_pipeline.datasets.images import ImageProbe, probe_image

WORKER_CRASHED = "the image decoder crashed on this file (its worker process died)"


class ProbeChunk:
    """Paths sent to the worker together; their probes once it has answered."""

    def __init__(self, worker: ProbeWorker, paths: list[Path]):
        self.worker = worker
        self.paths = paths
        self.submitted = False
        self.probes: list[ImageProbe] | None = None

    def submit(self) -> None:
        if not self.submitted:
            self.submitted = True
            self.worker.submit(self)

    def probe(self, index: int) -> ImageProbe:
        if self.probes is None:
            if not self.submitted and not self.worker.started:
                return probe_image(self.paths[index])  # fewer images than a chunk: no worker for them
            self.submit()
            self.worker.poll()
            if self.probes is None and not self.worker.answered:
                # The worker is still starting (a tenth of a second): the engine's first requests
                # are not held back for it; their images are probed here instead.
                return probe_image(self.paths[index])
            self.worker.wait(self)
        assert self.probes is not None
        return self.probes[index]


class ProbeWorker:
    """One worker process that probes chunks of paths in order; started at the first chunk."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: deque[ProbeChunk] = deque()  # sent, in the order the answers come
        self.answered = False  # some chunk's probes came back from a worker

    @property
    def started(self) -> bool:
        return self._proc is not None

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "defake_pipeline.datasets.probe_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # unbuffered: a pickle is read to its end and no further, so select() tells the truth
            )
        return self._proc

    def _send(self, paths: list[Path]) -> bool:
        proc = self._start()
        assert proc.stdin is not None
        try:
            pickle.dump(paths, proc.stdin)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def submit(self, chunk: ProbeChunk) -> None:
        # Requests are small and at most PROBE_AHEAD images are out, so this write never waits
        # for the worker; its answers wait in its own pipe until they are read.
        self.poll()
        self._pending.append(chunk)
        self._send(chunk.paths)

    def poll(self) -> None:
        """Read every answer that is already there, without waiting. Answers are read as they
        come even for chunks that were probed here meanwhile, so the worker never waits on a
        full pipe (and the requests sent to it never wait on the worker)."""
        while self._proc is not None and self._pending:
            assert self._proc.stdout is not None
            if not select.select([self._proc.stdout], [], [], 0)[0]:
                return
            self._read_head()

    def _read_head(self) -> None:
        head = self._pending[0]
        probes = self._receive()
        if probes is None:
            self._after_crash()
            return
        self._pending.popleft()
        head.probes = probes
        self.answered = True

    def _receive(self) -> list[ImageProbe] | None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            return pickle.load(self._proc.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            return None  # the worker died

    def wait(self, chunk: ProbeChunk) -> None:
        """Read answers, in order, until ``chunk`` has its probes."""
        while chunk.probes is None:
            self._read_head()

    def _after_crash(self) -> None:
        """The worker died on the chunk at the head (it works in order): that chunk is probed one
        image at a time in new workers, then the chunks behind it are sent to the last one."""
        head = self._pending.popleft()
        behind = list(self._pending)
        self._pending.clear()
        head.probes = [self._probe_alone(path) for path in head.paths]
        for chunk in behind:
            self.submit(chunk)

    def _probe_alone(self, path: Path) -> ImageProbe:
        self._stop()
        if self._send([path]):
            probes = self._receive()
            if probes:
                return probes[0]
        self._stop()
        return ImageProbe(sha256=None, size_bytes=None, error=WORKER_CRASHED)

    def _stop(self) -> None:
        if self._proc is not None:
            for pipe in (self._proc.stdin, self._proc.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        self._pending.clear()
        self._stop()


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: a pickled list of paths in, the list of their probes out, until EOF."""
    while True:
        try:
            paths = pickle.load(requests)
        except EOFError:
            return
        pickle.dump([probe_image(Path(p)) for p in paths], answers)
        answers.flush()


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the run that started this worker handles it, and
    # the worker ends when its input does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
