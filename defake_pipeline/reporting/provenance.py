"""What answered a run, as reports show it: the snapshots the endpoint named, the verdict
formats and the cache generations, with their counts."""

from __future__ import annotations

import pandas as pd

# Which snapshots answered each ranked chat model × prompt, with counts.
SNAPSHOTS_SQL = """
SELECT model, prompt, coalesce(served_model, 'not recorded') AS served_model, count(*) AS n FROM scored
WHERE NOT is_error AND prompt <> '-'
  AND (model, prompt) IN (SELECT (model, prompt) FROM partition_gate WHERE status = 'passed')
GROUP BY ALL ORDER BY model, prompt, n DESC, served_model
"""


def answer_counts(rows: pd.DataFrame, column: str) -> list[tuple[str, int]]:
    """Each value of ``column`` with its count, most frequent first (answers journaled before the
    column was recorded count as "not recorded"); none where nothing was recorded."""
    if column not in rows or rows[column].isna().all():
        return []
    counted = rows[column].map(lambda value: "not recorded" if pd.isna(value) else str(value)).value_counts()
    return [(value, int(n)) for value, n in counted.items()]


def snapshots_by_run(rows: pd.DataFrame) -> dict[tuple[str, str], list[tuple[str, int]]]:
    runs: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for model, prompt, served, n in rows.itertuples(index=False, name=None):
        runs.setdefault((model, prompt), []).append((served, int(n)))
    return runs
