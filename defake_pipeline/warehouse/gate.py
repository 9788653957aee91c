"""The quality gate of a prediction partition: its error and unknown rates against thresholds.

One SQL statement computes the gate. The Dagster checks run it on one partition's Parquet
file; the warehouse runs it on every partition and keeps the result as ``partition_gate``,
so rankings, comparisons and reports read the gate from the data, never from run history.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd

from defake_pipeline.records import prediction_schema
from defake_pipeline.storage import StoredPath
from defake_pipeline.warehouse.metrics_sql import ERROR_RATE_SQL, SCORED_VIEW_SQL, UNKNOWN_RATE_SQL
from defake_pipeline.warehouse.parquet import readable_copies

GATE_PASSED, GATE_FAILED, GATE_MISSING = "passed", "failed", "missing"


@dataclass(frozen=True)
class GateThresholds:
    """A partition passes while both rates stay at or under these shares."""

    max_error_rate: float = 0.2  # images with no answer after retries, over all images
    max_unknown_rate: float = 0.5  # answers with no verdict, over the images that got an answer


# Over a relation `scored` (manifest rows joined to one or more partitions' predictions, see
# SCORED_VIEW_SQL): one gate per dataset × model × prompt, so a dataset full of errors is held
# back however clean the others are. `$max_error` and `$max_unknown` are the thresholds.
GATE_SQL = f"""
WITH rates AS (
    SELECT
        dataset, model, prompt,
        count(*) AS n_images,
        count(*) FILTER (WHERE is_error) AS n_error,
        count(*) FILTER (WHERE is_unknown) AS n_unknown,
        count(*) FILTER (WHERE is_refused) AS n_refused
    FROM scored
    GROUP BY dataset, model, prompt
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
    dataset, model, prompt, n_images, n_error, n_unknown, n_refused, error_rate, unknown_rate,
    CASE WHEN error_rate_over OR unknown_rate_over THEN 'failed' ELSE 'passed' END AS status,
    concat_ws('; ',
        CASE WHEN error_rate_over
             THEN printf('error rate %.1f%% over the %.0f%% limit', 100 * error_rate, 100 * $max_error) END,
        CASE WHEN unknown_rate_over
             THEN printf('unknown rate %.1f%% over the %.0f%% limit', 100 * unknown_rate, 100 * $max_unknown)
                  || CASE WHEN n_refused > 0 THEN printf(' (%d of %d answers refused)', n_refused, n_images - n_error)
                          ELSE '' END END
    ) AS reason,
    error_rate_over, unknown_rate_over
FROM judged
ORDER BY dataset, model, prompt
"""


def add_missing_prediction_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Columns the record gained since older partition files (and seed CSVs) were written: NULL there."""
    have = {row[0] for row in con.execute("DESCRIBE predictions").fetchall()}
    for field in prediction_schema():
        if field.name not in have:
            sql_type = {"string": "VARCHAR", "int64": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN"}[str(field.type)]
            con.execute(f'ALTER TABLE predictions ADD COLUMN "{field.name}" {sql_type}')


def gate_params(thresholds: GateThresholds) -> dict[str, float]:
    return {"max_error": thresholds.max_error_rate, "max_unknown": thresholds.max_unknown_rate}


def create_gate_table(
    con: duckdb.DuckDBPyConnection,
    thresholds: GateThresholds,
    expected: list[tuple[str, str]] | None = None,
    unreadable: dict[tuple[str, str], str] | None = None,
) -> None:
    """``partition_gate`` over the ``scored`` view: one row per dataset × partition with rows,
    plus a ``missing`` row for each dataset of each expected (registered) partition that has
    none yet, or whose file is unreadable (the reason says which, and how to rebuild it)."""
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
            SELECT d.dataset, w.model, w.prompt, 0, 0, 0, 0, NULL, NULL, 'missing', w.reason, false, false
            FROM wanted AS w CROSS JOIN (SELECT DISTINCT dataset FROM image_manifest) AS d
            ANTI JOIN partition_gate AS g ON g.dataset = d.dataset AND g.model = w.model AND g.prompt = w.prompt
            """
        )


@dataclass(frozen=True)
class PartitionGate:
    """The gate of one partition file: a row per dataset, and what failed."""

    rows: pd.DataFrame  # GATE_SQL's columns

    @property
    def status(self) -> str:
        if self.rows.empty:
            return GATE_MISSING
        return GATE_PASSED if (self.rows["status"] == GATE_PASSED).all() else GATE_FAILED

    def failures(self, column: str) -> list[str]:
        """The datasets over one threshold (``error_rate_over`` or ``unknown_rate_over``)."""
        return [str(d) for d in self.rows.loc[self.rows[column].astype(bool), "dataset"]]

    def summary(self) -> dict[str, str]:
        """The gate in a few words per dataset, for a partition's metadata."""
        return {f"gate/{r.dataset}": f"{r.status} {r.reason or ''}".strip() for r in self.rows.itertuples()}

    @property
    def reason(self) -> str:
        failed = self.rows[self.rows["status"] != GATE_PASSED]
        return "; ".join(f"{r.dataset}: {r.reason}" for r in failed.itertuples()) or (
            "no images" if self.rows.empty else ""
        )


def partition_gate(parquet: StoredPath, manifests: pd.DataFrame, thresholds: GateThresholds) -> PartitionGate:
    """The gate of one partition file, per dataset of the manifest rows it answers."""
    with readable_copies([parquet]) as [name], duckdb.connect() as con:
        con.register("image_manifest", manifests)
        con.execute("CREATE TABLE predictions AS SELECT * FROM read_parquet(?)", [name])
        add_missing_prediction_columns(con)
        con.execute(SCORED_VIEW_SQL)
        return PartitionGate(con.execute(GATE_SQL, gate_params(thresholds)).df())
