"""``mllmdf``: the command line, a thin shell over the domain packages (no logic of its own)."""

from __future__ import annotations

import errno
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from defake_pipeline.errors import DefakeError, RunInterrupted, UnreachableEndpointError
from defake_pipeline.settings import homes_notice, load_settings
from defake_pipeline.text import one_line, shown_url, visible_controls
from defake_pipeline.warehouse.layout import HomeLayout

log = logging.getLogger("mllmdf")
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_WRITING_COMMANDS = ("classify", "infer", "doc", "materialize")


class DefakeGroup(click.Group):
    """Shows a DefakeError as one line on stderr (exit 2), never as a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DefakeError as exc:
            print_line("error", str(exc) + _model_hint(exc))
            sys.exit(getattr(exc, "exit_code", 2))
        except KeyboardInterrupt:
            click.echo(f"error: {RunInterrupted(signal.SIGINT)}", err=True)
            sys.exit(128 + signal.SIGINT)
        except OSError as exc:
            line = _unwritable_line(exc)
            if line is None:
                raise
            print_line("error", line)
            sys.exit(2)


def _unwritable_line(exc: OSError) -> str | None:
    """What stops a write under DEFAKE_HOME or DAGSTER_HOME, as a line naming the path: a
    read-only or someone else's folder, a file where a folder should be, a full device. None
    for any other error, which is a fault of the code and keeps its traceback."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # Some writers (pyarrow's) name no file: then the homes are named.
        env = load_settings()
        where = exc.filename or f"under DEFAKE_HOME {shown_url(env.DEFAKE_HOME)} or DAGSTER_HOME {env.DAGSTER_HOME}"
        return f"cannot write {where}: no space left on its device"
    if not exc.filename:
        return None
    if exc.errno in _UNWRITABLE:
        return f"cannot write {exc.filename}: {exc.strerror}"
    if exc.errno == errno.ENOTDIR:
        return f"cannot make {exc.filename}: a part of that path is a file, not a folder"
    if exc.errno == errno.EEXIST:
        return f"cannot make the folder {exc.filename}: a file of that name is there"
    return None


@contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM ends the block as RunInterrupted, so the command says in one line what was kept
    (as Ctrl-C does), instead of vanishing without a word."""

    def interrupt(signum, _frame):
        raise RunInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _model_hint(exc: DefakeError) -> str:
    """For an endpoint nothing answers at (the seed's default model, llama32vi, wants a vLLM
    server at BASE_URL), which models this project registers and how to pick one."""
    if not isinstance(exc, UnreachableEndpointError):
        return ""
    from defake_pipeline.endpoints.registry import registered_models

    try:
        names = registered_models()
    except DefakeError:
        return ""
    return f"; models registered here: {', '.join(names) or 'none'} (choose one with --model NAME)"


class _LogFile(logging.FileHandler):
    """The run's log file. A line it cannot write (a full device) is lost without a word: the
    command itself says what failed, and a logging traceback on stderr would bury that line.
    Any other failure (a record that cannot be formatted) is reported as logging reports it."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def setup_logging(layout: HomeLayout, log_id: str, verbose: bool) -> None:
    """Log to stderr, and to DEFAKE_HOME/logs/<log_id or main>.log as the seed's -l/--log_id did."""
    log_dir = layout.logs_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    file_handler = _LogFile(log_dir / f"{log_id or 'main'}.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [file_handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def print_line(kind: str, text: str) -> None:
    """``kind: text`` as one line on stderr. The text quotes file names and endpoints' messages:
    their control characters are shown, not acted on, and cannot start a line of their own."""
    click.echo(f"{kind}: {one_line(text)}", err=True)


def print_turns(pred) -> None:
    # Answers and file names are shown, never acted on: escape sequences in them are made visible.
    name = one_line(Path(pred.path).name)
    for i, turn in enumerate(pred.turns):
        click.echo(f"--- {name} · turn {i + 1}/{len(pred.turns)} ---\n{visible_controls(turn)}", err=True)
    if pred.error:
        click.echo(f"--- {name} · error: {one_line(pred.error)}", err=True)


@click.group(cls=DefakeGroup)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Evaluate multimodal LLMs as detectors of AI-generated images."""
    if ctx.invoked_subcommand in _WRITING_COMMANDS and (notice := homes_notice()):
        click.echo(f"note: {notice}", err=True)


def endpoint_spec(name: str):
    """The model's spec with the environment's endpoint URLs (BASE_URL, OPENAI_BASE_URL)."""
    from defake_pipeline.endpoints.registry import get_model

    env = load_settings()
    return get_model(name).with_endpoint_urls(env.BASE_URL, env.OPENAI_BASE_URL)
