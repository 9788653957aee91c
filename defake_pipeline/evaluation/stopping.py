"""SIGINT and SIGTERM during an evaluation's event loop, acted on where the loop can stop.

A Python signal handler runs at whatever bytecode the main thread is at. When that is inside an
asyncio callback, asyncio catches what the handler raises (anything but KeyboardInterrupt and
SystemExit, so Dagster's interrupt and the CLI's RunInterrupted too) and only logs it: the stop
is lost and requests go on being sent. A handler raising its own exception into a loop busy with
32 workers was lost in 3 of 30 tries here. So while the loop runs, these signals only cancel it,
through the loop's own signal handling; once it has unwound (requests in flight cancelled,
answers journaled), the handler that was in place before (Dagster's, the CLI's or Python's
default) gets the signal.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from defake_pipeline.errors import RunInterrupted

T = TypeVar("T")
P = ParamSpec("P")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Each signal that stopped an evaluation in this process, in order. Dagster's handler, in place
# during a run, raises its own interruption (so that the run is recorded as interrupted) without
# the signal's name; the CLI reads it here to say in one line what stopped it.
_stopped_by: list[int] = []


def stop_signal() -> int | None:
    """The signal that stopped this process's latest stopped evaluation, or None."""
    return _stopped_by[-1] if _stopped_by else None


def stops() -> int:
    """How many evaluations in this process a signal has stopped."""
    return len(_stopped_by)


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, stopped cleanly by SIGINT or SIGTERM, which then reach the handler
    that was in place; if that handler only notes the signal, RunInterrupted is raised."""
    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(main)  # only the main thread receives signals
    received: list[int] = []
    try:
        return asyncio.run(_cancelled_by_signals(main, received))
    except asyncio.CancelledError:
        if not received:
            raise
    signum = received[0]
    _stopped_by.append(signum)
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
    raise RunInterrupted(signum)


def stoppable(coroutine_function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The blocking twin of a coroutine function, for callers without an event loop: its
    coroutine runs through ``run_stoppable``."""

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_stoppable(coroutine_function(*args, **kwargs))

    run.__doc__ = f"``{coroutine_function.__name__}``, blocking; SIGINT and SIGTERM stop it cleanly."
    return run


async def _cancelled_by_signals(main: Coroutine[Any, Any, T], received: list[int]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # asyncio.run runs this as its main task

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler in (signal.SIG_IGN, None):
            continue  # a signal the process ignores stays ignored
        previous[signum] = handler
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await main
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)
