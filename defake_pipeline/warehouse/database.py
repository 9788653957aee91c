"""The DuckDB warehouse, rebuilt from the Parquet files beside the old one and renamed into place
(or, for a DEFAKE_HOME on object storage, built in a local scratch file and sent in one PUT)."""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import duckdb
import pandas as pd

from defake_pipeline.errors import NotMaterialized
from defake_pipeline.records import prediction_schema
from defake_pipeline.storage import StoredPath, is_remote, sorted_glob
from defake_pipeline.warehouse.files import atomic_path, remove_abandoned, remove_quietly
from defake_pipeline.warehouse.gate import GateThresholds, add_missing_prediction_columns, create_gate_table
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.metrics_sql import (
    COMPARISON_COUNTS_SQL,
    METRICS_SQL,
    SCORED_VIEW_SQL,
    mcnemar_exact_p,
)
from defake_pipeline.warehouse.parquet import partition_of, readable_copies, unreadable_parquet


def rebuild_warehouse(
    layout: HomeLayout,
    thresholds: GateThresholds | None = None,
    partitions: list[tuple[str, str]] | None = None,
) -> dict[str, int]:
    """Rebuild ``defake.duckdb`` from the Parquet files; returns row counts per table.

    With ``partitions`` (the registered model × prompt pairs), only their files are read,
    so a removed prompt or model leaves the warehouse, and a registered pair with no file
    is listed as ``missing`` in ``partition_gate``.
    """
    manifests = sorted_glob(layout.manifests_dir, "*.parquet")
    if partitions is None:
        predictions = sorted_glob(layout.predictions_dir, "model=*/prompt=*.parquet")
    else:
        predictions = [f for m, p in partitions if (f := layout.predictions_file(m, p)).exists()]
    if not manifests:
        raise NotMaterialized(f"{layout.manifests_dir}: no image manifest yet (materialize image_manifest first)")
    remove_abandoned(layout.warehouse, ".duckdb.tmp")
    with (
        readable_copies([*manifests, *predictions]) as names,
        atomic_path(layout.warehouse, ".duckdb.tmp", create=False) as tmp,
        duckdb.connect(str(tmp)) as con,
    ):
        manifest_names, prediction_names = names[: len(manifests)], names[len(manifests) :]
        # An unreadable partition file (truncated, corrupt) must not stop every later rebuild:
        # it counts as missing, with the reason, until a run of that partition rebuilds it.
        copies = list(zip(predictions, prediction_names, strict=True))
        unreadable = {partition_of(f): why for f, name in copies if (why := unreadable_parquet(f, name))}
        prediction_names = [name for f, name in copies if partition_of(f) not in unreadable]
        con.execute(
            "CREATE TABLE image_manifest AS SELECT * FROM read_parquet(?, union_by_name=true)", [manifest_names]
        )
        if prediction_names:
            con.execute(
                "CREATE TABLE predictions AS SELECT * FROM read_parquet(?, union_by_name=true)", [prediction_names]
            )
        else:
            # From the Arrow schema: an empty pandas frame would give untyped (NULL) columns.
            empty = prediction_schema().empty_table()  # noqa: F841 - read by DuckDB's replacement scan
            con.execute("CREATE TABLE predictions AS SELECT * FROM empty")
        expected = list(dict.fromkeys([*(partitions or []), *unreadable]))
        create_metrics(con, thresholds or GateThresholds(), expected or None, unreadable)
        tables = ("image_manifest", "predictions", "partition_gate", "metrics", "comparisons")
        counts = {t: int(con.execute(f"SELECT count(*) FROM {t}").df().iat[0, 0]) for t in tables}
    return counts


def create_metrics(
    con: duckdb.DuckDBPyConnection,
    thresholds: GateThresholds | None = None,
    partitions: list[tuple[str, str]] | None = None,
    unreadable: dict[tuple[str, str], str] | None = None,
) -> None:
    """The ``partition_gate`` table, the ``scored`` view and the ``metrics`` and ``comparisons``
    tables, over the ``image_manifest`` and ``predictions`` tables.

    Every partition gets metrics, each row carrying its ``gate_status``; comparisons pair
    only partitions that passed the gate.
    """
    add_missing_prediction_columns(con)
    con.execute(SCORED_VIEW_SQL)
    create_gate_table(con, thresholds or GateThresholds(), partitions, unreadable)
    con.execute(
        f"CREATE TABLE metrics AS SELECT m.*, g.status AS gate_status FROM ({METRICS_SQL}) AS m "
        "LEFT JOIN partition_gate AS g ON (g.dataset, g.model, g.prompt) = (m.dataset, m.model, m.prompt)"
    )
    pairs = con.execute(COMPARISON_COUNTS_SQL).df()
    pairs["mcnemar_p"] = [
        mcnemar_exact_p(a, b) for a, b in zip(pairs["only_a_right"], pairs["only_b_right"], strict=True)
    ]
    con.register("comparison_frame", pairs)
    con.execute("CREATE TABLE comparisons AS SELECT * FROM comparison_frame")
    con.unregister("comparison_frame")


# The warehouse a ``reading`` block holds open, and its connection.
_held: ContextVar[tuple[str, duckdb.DuckDBPyConnection] | None] = ContextVar("_held", default=None)


@contextmanager
def reading(layout: HomeLayout) -> Iterator[None]:
    """Within the block, every query of this warehouse shares one read-only connection. Opening
    and closing one costs tens of milliseconds, and publishing makes about six queries per
    report: in benchmarks/report_bench.py, 60 reports rendered again take 12.4 s this way
    against 24.8 s, and checking 60 unchanged ones 0.36 s against 2.37 s.

    The block reads one version of the warehouse throughout, even if another process renames a
    rebuilt one into place meanwhile. It must end with its work: while any connection to a path
    is open, DuckDB hands a new connection to that path the same, older database."""
    with duckdb.connect(str(_readable(layout.warehouse)), read_only=True) as con:
        token = _held.set((str(layout.warehouse), con))
        try:
            yield
        finally:
            _held.reset(token)


@contextmanager
def _connection(layout: HomeLayout) -> Iterator[duckdb.DuckDBPyConnection]:
    held = _held.get()
    if held is not None and held[0] == str(layout.warehouse):
        yield held[1]
        return
    with duckdb.connect(str(_readable(layout.warehouse)), read_only=True) as con:
        yield con


def query(layout: HomeLayout, sql: str, params: list | None = None) -> pd.DataFrame:
    """Read from the warehouse (read-only, so any number of readers can run at once)."""
    with _connection(layout) as con:
        return con.execute(sql, params or []).df()


def export(layout: HomeLayout, sql: str, target: StoredPath, params: list | None = None) -> None:
    """Write the result of ``sql`` to ``target`` as CSV with a header (whole, or not at all)."""
    with atomic_path(target, ".csv.tmp") as tmp, _connection(layout) as con:
        escaped = str(tmp).replace("'", "''")
        con.execute(f"COPY ({sql}) TO '{escaped}' (HEADER)", params or [])


# A warehouse on object storage is read from a local copy, fetched again when the object
# changes (its ETag): a report makes dozens of queries.
_copies: dict[str, tuple[str, Path]] = {}


def _readable(warehouse: StoredPath) -> Path:
    if not warehouse.exists():
        raise NotMaterialized(f"{warehouse}: no warehouse yet (materialize metrics first: `mllmdf materialize`)")
    if not is_remote(warehouse):
        return Path(str(warehouse))
    etag = str(warehouse.fs.info(warehouse.path).get("ETag", ""))
    held = _copies.get(str(warehouse))
    if held and held[0] == etag and held[1].exists():
        return held[1]
    fd, name = tempfile.mkstemp(prefix=".defake-warehouse-", suffix=".duckdb")
    os.close(fd)
    warehouse.fs.get_file(warehouse.path, name)
    if held:
        remove_quietly(held[1])
    _copies[str(warehouse)] = (etag, Path(name))
    return Path(name)


@atexit.register
def _remove_copies() -> None:
    for _, copy in _copies.values():
        remove_quietly(copy)
