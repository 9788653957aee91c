"""Loading of prompt decorators: ``module.func`` names resolved from a ``decorators/`` folder.

A decorator is called as ``func(cache: dict) -> None`` before its conversation renders,
and may add variables to the cache (few-shot examples, an ROI crop, ...).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from defake_pipeline.core.errors import PromptError
from defake_pipeline.core.paths import project_dirs
from defake_pipeline.core.prompts import LoadedPrompt

Decorator = Callable[[dict], None]

_loaded_modules: dict[Path, ModuleType] = {}


def _load_module(file: Path) -> ModuleType:
    file = file.resolve()
    if file not in _loaded_modules:
        # A private namespace keeps user decorator modules from shadowing installed packages.
        mod_name = f"defake_decorators.{file.parent.name}.{file.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        _loaded_modules[file] = module
    return _loaded_modules[file]


def find_decorator(name: str, search_dirs: list[Path] | None = None) -> Decorator | None:
    """The function for ``module.func``, or None where no decorators folder ships it."""
    module_path, _, func_name = name.rpartition(".")
    relative = Path(*module_path.split(".")).with_suffix(".py")
    for folder in search_dirs if search_dirs is not None else project_dirs("decorators"):
        file = folder / relative
        if file.is_file():
            func = getattr(_load_module(file), func_name, None)
            if callable(func):
                return func
    return None


def resolve_decorators(prompt: LoadedPrompt) -> dict[str, Decorator]:
    """Every decorator a prompt names, resolved up front so a missing one fails before any request."""
    resolved: dict[str, Decorator] = {}
    for conv in prompt.spec.conversations:
        for name in conv.decorators:
            if name in resolved:
                continue
            func = find_decorator(name)
            if func is None:
                raise PromptError(
                    f"{prompt.path}: conversation {conv.id!r}: decorator {name!r} is not shipped "
                    "(no such module.function under decorators/)"
                )
            resolved[name] = func
    return resolved
