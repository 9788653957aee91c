"""The quality gate of a prediction partition: its error and unknown rates against thresholds.

One SQL statement computes the gate. The Dagster checks run it on one partition's Parquet
file; the warehouse runs it on every partition and keeps the result as ``partition_gate``,
so rankings, comparisons and reports read the gate from the data, never from run history.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from defake_pipeline.warehouse.metrics_sql import ERROR_RATE_SQL, UNKNOWN_RATE_SQL

GATE_PASSED, GATE_FAILED, GATE_MISSING = "passed", "failed", "missing"


@dataclass(frozen=True)
class GateThresholds:
    """A partition passes while both rates stay at or under these shares."""

    max_error_rate: float = 0.2  # images with no answer after retries, over all images
    max_unknown_rate: float = 0.5  # answers with no verdict, over the images that got an answer


# Over a relation `predictions` holding one or more partitions; `$max_error` and
# `$max_unknown` are the thresholds.
GATE_SQL = f"""
WITH rates AS (
    SELECT
        model, prompt,
        count(*) AS n_images,
        count(*) FILTER (WHERE error IS NOT NULL) AS n_error,
        count(*) FILTER (WHERE error IS NULL AND pred = -1) AS n_unknown
    FROM predictions
    GROUP BY model, prompt
), rated AS (
    SELECT *,
        {ERROR_RATE_SQL} AS error_rate,
        coalesce({UNKNOWN_RATE_SQL}, 0.0) AS unknown_rate
    FROM rates
), judged AS (
    SELECT *, error_rate > $max_error AS error_rate_over, unknown_rate > $max_unknown AS unknown_rate_over
    FROM rated
)
SELECT
    model, prompt, n_images, n_error, n_unknown, error_rate, unknown_rate,
    CASE WHEN error_rate_over OR unknown_rate_over THEN 'failed' ELSE 'passed' END AS status,
    concat_ws('; ',
        CASE WHEN error_rate_over
             THEN printf('error rate %.1f%% over the %.0f%% limit', 100 * error_rate, 100 * $max_error) END,
        CASE WHEN unknown_rate_over
             THEN printf('unknown rate %.1f%% over the %.0f%% limit', 100 * unknown_rate, 100 * $max_unknown) END
    ) AS reason,
    error_rate_over, unknown_rate_over
FROM judged
"""


def gate_params(thresholds: GateThresholds) -> dict[str, float]:
    return {"max_error": thresholds.max_error_rate, "max_unknown": thresholds.max_unknown_rate}


def create_gate_table(
    con: duckdb.DuckDBPyConnection,
    thresholds: GateThresholds,
    expected: list[tuple[str, str]] | None = None,
    unreadable: dict[tuple[str, str], str] | None = None,
) -> None:
    """``partition_gate`` over the ``predictions`` table: one row per partition with rows, plus
    a ``missing`` row for each expected (registered) partition that has none yet, or whose
    file is unreadable (the reason says which, and how to rebuild it)."""
    con.execute(f"CREATE TABLE partition_gate AS {GATE_SQL}", gate_params(thresholds))
    if expected:
        reasons = unreadable or {}
        wanted = pd.DataFrame(  # noqa: F841 - DuckDB replacement scan
            [
                (
                    m,
                    p,
                    f"{reasons[(m, p)]}; run the partition again to rebuild it from the journal"
                    if (m, p) in reasons
                    else "no predictions yet",
                )
                for m, p in expected
            ],
            columns=["model", "prompt", "reason"],
        )
        con.execute(
            """
            INSERT INTO partition_gate
            SELECT w.model, w.prompt, 0, 0, 0, NULL, NULL, 'missing', w.reason, false, false
            FROM wanted AS w ANTI JOIN partition_gate AS g ON g.model = w.model AND g.prompt = w.prompt
            """
        )


def partition_gate(parquet: Path, thresholds: GateThresholds) -> dict:
    """The gate row of one partition file (status ``missing`` when it holds no rows)."""
    with duckdb.connect() as con:
        predictions = con.read_parquet(str(parquet))  # noqa: F841 - the relation GATE_SQL reads
        rows = con.execute(GATE_SQL, gate_params(thresholds)).df()
    if rows.empty:
        return {
            "n_images": 0,
            "error_rate": None,
            "unknown_rate": None,
            "status": GATE_MISSING,
            "reason": "no images",
            "error_rate_over": False,
            "unknown_rate_over": False,
        }
    return rows.iloc[0].to_dict()
