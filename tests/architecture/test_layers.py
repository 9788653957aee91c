"""The layers of docs/architecture.md, enforced: only defs/ and cli/ (and the test harness)
import dagster, and no module imports a package above its own."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "defake_pipeline"
# Lower numbers sit lower; a module may import its own package and anything lower.
LAYER = {
    "errors": 0, "settings": 0, "records": 0, "text": 0, "verdict": 0, "storage": 0,
    "warehouse": 1, "imaging": 1,
    "prompting": 2, "datasets": 2,
    "endpoints": 3,
    "evaluation": 4,
    "reporting": 5,
    "seed": 6,
    "defs": 7,
    "definitions": 8, "cli": 8,
    "testing": 9,
}  # fmt: skip
DAGSTER_ALLOWED = {"defs", "definitions", "cli", "testing"}


def _package_of(module: str) -> str:
    return module.split(".")[1] if module.startswith("defake_pipeline.") else ""


def _imports(file: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("file", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(file):
    own = file.relative_to(PACKAGE).parts[0].removesuffix(".py")
    assert own in LAYER, f"{own} is in no layer of docs/architecture.md"
    for name in _imports(file):
        if name.split(".")[0] == "dagster" or name.startswith("dagster_"):
            assert own in DAGSTER_ALLOWED, f"{file.name} imports {name}: only defs/ and cli/ may use Dagster"
        target = _package_of(name)
        if target and target != own:
            assert LAYER[target] <= LAYER[own], f"{own} (layer {LAYER[own]}) imports {name} (layer {LAYER[target]})"
