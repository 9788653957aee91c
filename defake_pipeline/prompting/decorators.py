"""Prompt decorators: ``module.func`` names resolved from a ``decorators/`` folder, and run with
a deadline off the event loop.

A decorator is called as ``func(cache: dict) -> None`` before its conversation renders,
and may add variables to the cache (few-shot examples, an ROI crop, ...).

The working directory's ``decorators/`` comes first, then the project's own. A module that
fails to import (the original tool's decorators import ``mllm_defake``) is skipped with its
error kept, so the next folder's module of that name still serves; when none does, the
error names the module and the import failure in one line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from defake_pipeline.errors import PromptError
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.settings import project_dirs

Decorator = Callable[[dict], None]

# How long one decorator call may take before its image fails (a hung decorator must not
# hang the run; threads cannot be killed, so the call is abandoned on a daemon thread).
DECORATOR_TIMEOUT_S = 60.0

_loaded_modules: dict[Path, ModuleType | str] = {}  # a module, or why it failed to import


def _load_module(file: Path) -> ModuleType | str:
    file = file.resolve()
    if file not in _loaded_modules:
        # A private namespace keeps user decorator modules from shadowing installed packages.
        mod_name = f"defake_decorators.{file.parent.name}.{file.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of user code at import is reported
            sys.modules.pop(mod_name, None)
            _loaded_modules[file] = f"{file} failed to import ({type(exc).__name__}: {exc})"
        else:
            _loaded_modules[file] = module
    return _loaded_modules[file]


def find_decorator(name: str, search_dirs: list[Path] | None = None) -> tuple[Decorator | None, list[str]]:
    """The function for ``module.func`` (or None where no folder ships it), and the import
    failures of same-named modules met on the way."""
    module_path, _, func_name = name.rpartition(".")
    relative = Path(*module_path.split(".")).with_suffix(".py")
    failures = []
    for folder in search_dirs if search_dirs is not None else project_dirs("decorators", shipped=True):
        file = folder / relative
        if not file.is_file():
            continue
        module = _load_module(file)
        if isinstance(module, str):
            failures.append(module)
            continue
        func = getattr(module, func_name, None)
        if callable(func):
            return func, failures
    return None, failures


def resolve_decorators(prompt: LoadedPrompt) -> dict[str, Decorator]:
    """Every decorator a prompt names, resolved up front so a missing one fails before any request."""
    resolved: dict[str, Decorator] = {}
    for conv in prompt.spec.conversations:
        for name in conv.decorators:
            if name in resolved:
                continue
            func, failures = find_decorator(name)
            if func is None:
                why = failures[0] if failures else "no such module.function under decorators/"
                raise PromptError(f"{prompt.path}: conversation {conv.id!r}: decorator {name!r} is not shipped ({why})")
            resolved[name] = func
    return resolved


class DecoratorTimeoutError(TimeoutError):
    """A decorator gave no result within its deadline (the image fails, the run goes on)."""


class DecoratorExitError(RuntimeError):
    """A decorator called ``sys.exit``: that image fails, the run goes on."""


log = logging.getLogger("mllmdf.decorators")
_calling = threading.local()  # .name: the decorator this thread is running, if any


class _DecoratorStdout:
    """``sys.stdout`` while decorators run: what a decorator prints goes to the log, since a
    command's standard output is its result (``classify`` prints the verdict there); every
    other thread writes through as before."""

    def __init__(self, real):
        self.real = real

    def write(self, text: str) -> int:
        name = getattr(_calling, "name", None)
        if name is None:
            return self.real.write(text)
        if text.strip():
            log.info("decorator %s printed: %s", name, text.rstrip())
        return len(text)

    def __getattr__(self, attr):
        return getattr(self.real, attr)


_routing = threading.Lock()
_n_calls = 0


def _route_stdout(delta: int) -> None:
    """Route stdout through ``_DecoratorStdout`` while any decorator call runs."""
    global _n_calls
    with _routing:
        _n_calls += delta
        if _n_calls > 0 and not isinstance(sys.stdout, _DecoratorStdout):
            sys.stdout = _DecoratorStdout(sys.stdout)
        elif _n_calls == 0 and isinstance(sys.stdout, _DecoratorStdout):
            sys.stdout = sys.stdout.real


async def call_decorator(func: Decorator, cache: dict, name: str, timeout_s: float = DECORATOR_TIMEOUT_S) -> None:
    """Run one decorator on a daemon thread: the event loop keeps serving other images, and a
    call past ``timeout_s`` is abandoned (its thread cannot hold the process open)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not done.done():
            done.set_result(None) if exc is None else done.set_exception(exc)

    def target() -> None:
        _calling.name = name
        _route_stdout(+1)
        try:
            func(cache)
        except SystemExit as exc:
            outcome: BaseException | None = DecoratorExitError(f"decorator {name!r} called sys.exit({exc.code!r})")
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = exc
        else:
            outcome = None
        finally:
            _calling.name = None
            _route_stdout(-1)
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop closed while an abandoned call was still running
            pass

    threading.Thread(target=target, name=f"decorator {name}", daemon=True).start()
    try:
        await asyncio.wait_for(done, timeout_s)
    except TimeoutError:
        raise DecoratorTimeoutError(f"decorator {name!r} gave no result within {timeout_s:g} s") from None
