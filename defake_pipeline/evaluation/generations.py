"""Cache generations: a partition's requests are keyed under its generation, 0 until a drift
canary finds the model changed and its entry says ``on_drift = "reevaluate"``. Then a new
generation begins: every request gets a new key, so the next run asks every image anew, and the
answers of earlier generations stay in the journal."""

from __future__ import annotations

from dataclasses import dataclass

from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.evaluation.journal_store import JournalStore, now_text
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.warehouse.layout import HomeLayout

_GENERATIONS = """
CREATE TABLE IF NOT EXISTS cache_generations (
    partition_key TEXT NOT NULL,
    generation INTEGER NOT NULL,
    began_at TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (partition_key, generation)
)
"""


@dataclass(frozen=True)
class Generation:
    number: int  # 0: the answers asked before any drift
    began_at: str | None
    reason: str


class CacheGenerations(JournalStore):
    """Each partition's cache generation: a new one begins when its canary finds drift and the
    model's entry says ``on_drift = "reevaluate"``."""

    TABLES = _GENERATIONS
    WHAT = "the record of cache generations"

    def current(self, partition_key: str) -> Generation:
        rows = self._run(
            "SELECT generation, began_at, reason FROM cache_generations WHERE partition_key = ? "
            "ORDER BY generation DESC LIMIT 1",
            (partition_key,),
        )
        return Generation(*rows[0]) if rows else Generation(0, None, "")

    def begin(self, partition_key: str, reason: str) -> Generation:
        number = self.current(partition_key).number + 1
        began = now_text()
        self._run("INSERT INTO cache_generations VALUES (?, ?, ?, ?)", (partition_key, number, began, reason))
        return Generation(number, began, reason)

    def all_current(self) -> dict[str, Generation]:
        rows = self._run(
            "SELECT partition_key, max(generation) FROM cache_generations GROUP BY partition_key",
        )
        return {key: self.current(key) for key, _ in rows}


def current_generation(layout: HomeLayout, partition_key: str) -> Generation:
    """A ``model|prompt`` partition's cache generation now."""
    generations = CacheGenerations(layout)
    try:
        return generations.current(partition_key)
    finally:
        generations.close()


def partition_generation(layout: HomeLayout, spec: ModelSpec, prompt: LoadedPrompt | None) -> int:
    """The cache generation a model × prompt's requests are keyed under now (0 for a baseline)."""
    if spec.backend == "baseline" or prompt is None:
        return 0
    return current_generation(layout, f"{spec.key}|{prompt.key}").number
