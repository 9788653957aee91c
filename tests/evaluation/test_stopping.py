"""A signal stops an evaluation wherever the event loop is when it arrives."""

import subprocess
import sys

from conftest import REPO

# Runs in a child process, so the signals reach no test runner. The handler raises its own
# exception, as Dagster's does during a step. Each trial signals an evaluation busy with 32
# requests in flight; a trial whose evaluation is still answering a second later lost the signal.
TRIALS_SCRIPT = r"""
import hashlib, os, random, signal, sys, threading, time
from pathlib import Path
from PIL import Image
from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator
from defake_pipeline.evaluation.journal import ResponseJournal
from defake_pipeline.prompting.spec import find_prompt, load_prompt
from defake_pipeline.records import ImageJob

class Interrupted(BaseException):
    pass

class SignalLost(Exception):
    pass

def interrupt(signum, frame):
    raise Interrupted()

signal.signal(signal.SIGTERM, interrupt)
base_url, folder, trials = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
spec = get_model("vllm").model_copy(update={"base_url": base_url})
prompt = load_prompt(find_prompt("simple"))
jobs = []
for i in range(4000):
    path = folder / f"{i}.png"
    Image.new("RGB", (8, 8), (i % 256, i // 256, 7)).save(path)
    jobs.append(ImageJob(path=path, key=hashlib.sha256(path.read_bytes()).hexdigest(), label=i % 2))
stopped = lost = 0
for trial in range(trials):
    signalled = []

    def send():
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    def on_result(pred):
        if signalled and time.monotonic() - signalled[0] > 1.0:
            raise SignalLost()

    journal = ResponseJournal(folder / f"journal-{trial}.sqlite")
    evaluator = make_evaluator(spec, prompt, journal, None, None)
    threading.Timer(random.uniform(0.3, 0.8), send).start()
    try:
        evaluate_sync(jobs, evaluator, on_result=on_result, collect=False, concurrency=32)
    except Interrupted:
        stopped += 1
    except SignalLost:
        lost += 1
    finally:
        journal.close()
print(stopped, lost)
"""


def test_a_signal_during_a_busy_evaluation_is_never_lost(chat_server, tmp_path):
    """A handler's exception raised inside an asyncio callback is only logged by asyncio; the
    evaluation must stop anyway, every time, and the handler in place must get the signal."""
    chat_server.state.latency_s = 0.005
    trials = 30
    done = subprocess.run(
        [sys.executable, "-c", TRIALS_SCRIPT, chat_server.base_url, str(tmp_path), str(trials)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    stopped, lost = map(int, done.stdout.split())
    assert (stopped, lost) == (trials, 0), done.stderr[-2000:]
