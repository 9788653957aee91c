"""Files under DEFAKE_HOME: manifests and prediction partitions as Parquet, and the DuckDB warehouse.

DuckDB allows one writing process per file. Nothing here holds a DuckDB connection while
a model is queried: each partition writes its own Parquet file (under a temporary name,
then renamed), and ``rebuild_warehouse`` builds a fresh database beside the old one and
renames it into place. Readers keep the file they opened; writers never meet a lock.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from defake_pipeline.core.gate import GateThresholds, create_gate_table
from defake_pipeline.core.metrics import COMPARISON_COUNTS_SQL, METRICS_SQL, SCORED_VIEW_SQL, mcnemar_exact_p
from defake_pipeline.core.paths import HomeLayout

PREDICTION_COLUMNS = [
    "image_sha256", "path", "label", "verdict", "pred", "score", "response", "turns", "latency_s",
    "prompt_tokens", "completion_tokens", "cost_usd", "n_requests", "error", "model", "model_id",
    "prompt", "prompt_hash", "created_at",
]  # fmt: skip


def write_parquet_atomic(frame: pd.DataFrame, target: Path) -> Path:
    """Write a Parquet file so that readers see the old file or the new one, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".parquet.tmp", dir=target.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


PREDICTION_SCHEMA = pa.schema(
    [
        ("image_sha256", pa.string()), ("path", pa.string()), ("label", pa.int64()), ("verdict", pa.string()),
        ("pred", pa.int64()), ("score", pa.float64()), ("response", pa.string()), ("turns", pa.string()),
        ("latency_s", pa.float64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
        ("cost_usd", pa.float64()), ("n_requests", pa.int64()), ("error", pa.string()), ("model", pa.string()),
        ("model_id", pa.string()), ("prompt", pa.string()), ("prompt_hash", pa.string()), ("created_at", pa.string()),
    ]
)  # fmt: skip
assert PREDICTION_SCHEMA.names == PREDICTION_COLUMNS


class PredictionWriter:
    """Streams prediction rows to a partition's Parquet file in batches, so memory stays flat.

    Rows go to a temporary file that replaces the target only on ``commit``; a crash
    leaves the previous partition file untouched (the journal keeps every answer).
    """

    BATCH_ROWS = 2000

    def __init__(self, target: Path):
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".parquet.tmp", dir=target.parent)
        os.close(fd)
        self._writer = pq.ParquetWriter(self._tmp, PREDICTION_SCHEMA)
        self._batch: list[dict] = []
        self.n_rows = 0

    def add(self, row: dict) -> None:
        self._batch.append(row)
        if len(self._batch) >= self.BATCH_ROWS:
            self._flush()

    def add_frame(self, frame: pd.DataFrame) -> None:
        """Rows read back from an earlier partition file (pandas NaN becomes null)."""
        self._flush()
        self._writer.write_table(pa.Table.from_pandas(frame[PREDICTION_COLUMNS], schema=PREDICTION_SCHEMA, preserve_index=False))
        self.n_rows += len(frame)

    def _flush(self) -> None:
        if self._batch:
            self._writer.write_table(pa.Table.from_pylist(self._batch, schema=PREDICTION_SCHEMA))
            self.n_rows += len(self._batch)
            self._batch = []

    def commit(self) -> Path:
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.target)
        return self.target

    def discard(self) -> None:
        try:
            self._writer.close()  # may fail too (a full disk): the file goes either way
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def predictions_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    return frame.astype({"label": "int64", "pred": "int64", "score": "float64", "n_requests": "int64"})


def unreadable_parquet(file: Path) -> str | None:
    """Why a Parquet file cannot be read to the end, or None when it can."""
    try:
        with duckdb.connect() as con:
            con.execute("SELECT * FROM read_parquet(?)", [str(file)]).fetchall()
    except duckdb.Error as exc:
        return f"{file.name} is unreadable ({str(exc).splitlines()[0][:200]})"
    return None


def _partition_of(file: Path) -> tuple[str, str]:
    """(model, prompt) of a file laid out as predictions/model=<m>/prompt=<p>.parquet."""
    return file.parent.name.removeprefix("model="), file.stem.removeprefix("prompt=")


def predictions_content_hash(files: list[Path]) -> str:
    """A hash of what the partition files say (answers, verdicts, errors; not timestamps): equal
    for a rerun that found nothing new."""
    existing = [str(f) for f in files if f.exists() and not unreadable_parquet(f)]
    if not existing:
        return "empty"
    with duckdb.connect() as con:
        row = con.execute(
            "SELECT count(*), sum(hash(model, prompt, image_sha256, path, label, pred, score, response, error, "
            "prompt_hash)) FROM read_parquet(?, union_by_name=true)",
            [existing],
        ).fetchone()
    return f"{row[0]}-{row[1]}"


def read_manifests(layout: HomeLayout) -> pd.DataFrame:
    files = sorted(layout.manifests_dir.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{layout.manifests_dir}: no image manifest yet (materialize image_manifest first)")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def missing_manifests(layout: HomeLayout, dataset_keys: list[str]) -> list[str]:
    """Defined datasets with no manifest file: their images are in no table and no ranking."""
    return [key for key in dataset_keys if not layout.manifest_file(key).exists()]


def missing_manifest_lines(layout: HomeLayout, keys: list[str]) -> list[str]:
    return [
        f"dataset {key!r} has no manifest ({layout.manifest_file(key)}): its images are left out of the "
        "warehouse and the leaderboard until image_manifest scans it again"
        for key in keys
    ]


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
    manifests = sorted(layout.manifests_dir.glob("*.parquet"))
    if partitions is None:
        predictions = sorted(layout.predictions_dir.glob("model=*/prompt=*.parquet"))
    else:
        predictions = [f for m, p in partitions if (f := layout.predictions_file(m, p)).exists()]
    # An unreadable partition file (truncated, corrupt) must not stop every later rebuild:
    # it counts as missing, with the reason, until a run of that partition rebuilds it.
    unreadable = {_partition_of(f): why for f in predictions if (why := unreadable_parquet(f))}
    predictions = [f for f in predictions if _partition_of(f) not in unreadable]
    if not manifests:
        raise FileNotFoundError(f"{layout.manifests_dir}: no image manifest yet (materialize image_manifest first)")
    layout.warehouse.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".defake-", suffix=".duckdb.tmp", dir=layout.warehouse.parent)
    os.close(fd)
    os.unlink(tmp)  # DuckDB wants to create the file itself
    try:
        with duckdb.connect(tmp) as con:
            con.execute("CREATE TABLE image_manifest AS SELECT * FROM read_parquet(?, union_by_name=true)", [list(map(str, manifests))])
            if predictions:
                con.execute(
                    "CREATE TABLE predictions AS SELECT * FROM read_parquet(?, union_by_name=true)",
                    [list(map(str, predictions))],
                )
            else:
                # From the Arrow schema: an empty pandas frame would give untyped (NULL) columns.
                empty = PREDICTION_SCHEMA.empty_table()  # noqa: F841 - read by DuckDB's replacement scan
                con.execute("CREATE TABLE predictions AS SELECT * FROM empty")
            expected = list(dict.fromkeys([*(partitions or []), *unreadable]))
            create_metrics(con, thresholds or GateThresholds(), expected or None, unreadable)
            tables = ("image_manifest", "predictions", "partition_gate", "metrics", "comparisons")
            counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        os.replace(tmp, layout.warehouse)
    finally:
        for leftover in (tmp, tmp + ".wal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
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
    create_gate_table(con, thresholds or GateThresholds(), partitions, unreadable)
    con.execute(SCORED_VIEW_SQL)
    con.execute(
        f"CREATE TABLE metrics AS SELECT m.*, g.status AS gate_status FROM ({METRICS_SQL}) AS m "
        "LEFT JOIN partition_gate AS g ON g.model = m.model AND g.prompt = m.prompt"
    )
    pairs = con.execute(COMPARISON_COUNTS_SQL).df()
    pairs["mcnemar_p"] = [mcnemar_exact_p(a, b) for a, b in zip(pairs["only_a_right"], pairs["only_b_right"], strict=True)]
    con.register("comparison_frame", pairs)
    con.execute("CREATE TABLE comparisons AS SELECT * FROM comparison_frame")
    con.unregister("comparison_frame")


def query(layout: HomeLayout, sql: str, params: list | None = None, fetch: bool = True) -> pd.DataFrame | None:
    """Read from the warehouse (read-only, so any number of readers can run at once)."""
    with duckdb.connect(str(layout.warehouse), read_only=True) as con:
        result = con.execute(sql, params or [])
        return result.df() if fetch else None
