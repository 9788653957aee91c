"""Files under DEFAKE_HOME: manifests and prediction partitions as Parquet, and the DuckDB warehouse.

DuckDB allows one writing process per file. Nothing here holds a DuckDB connection while
a model is queried: each partition writes its own Parquet file (under a temporary name,
then renamed), and ``rebuild_warehouse`` builds a fresh database beside the old one and
renames it into place. Readers keep the file they opened; writers never meet a lock."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from defake_pipeline.errors import NotMaterialized
from defake_pipeline.records import PREDICTION_COLUMNS, prediction_schema
from defake_pipeline.storage import StoredPath, is_remote, sorted_glob
from defake_pipeline.warehouse.files import (
    atomic_path,
    publish,
    remove_abandoned,
    remove_quietly,
    temporary_beside,
)
from defake_pipeline.warehouse.layout import HomeLayout


@contextmanager
def readable_copies(files: Sequence[StoredPath]) -> Iterator[list[str]]:
    """Names DuckDB and pyarrow can read ``files`` by: a local file as it is, a store's file
    fetched whole in one GET into a scratch folder that goes when the block ends. Reading a
    store's file by ranges would take its size from an earlier listing or HEAD, and another run
    of the same partition may have replaced the object since: one read would mix two objects."""
    if not any(is_remote(f) for f in files):
        yield [str(f) for f in files]
        return
    with tempfile.TemporaryDirectory(prefix="defake-read-") as scratch:
        names = []
        for i, file in enumerate(files):
            if is_remote(file):
                copy = Path(scratch) / f"{i}-{file.name}"
                file.fs.get_file(file.path, str(copy))
                names.append(str(copy))
            else:
                names.append(str(file))
        yield names


def read_parquet_frame(file: StoredPath) -> pd.DataFrame:
    with readable_copies([file]) as [name]:
        return pd.read_parquet(name)


def write_parquet_atomic(frame: pd.DataFrame, target: StoredPath) -> StoredPath:
    """Write a Parquet file so that readers see the old file or the new one, never half of one."""
    remove_abandoned(target, ".parquet.tmp")
    with atomic_path(target, ".parquet.tmp") as tmp:
        frame.to_parquet(tmp, index=False)
    return target


class PredictionWriter:
    """Streams prediction rows to a partition's Parquet file in batches, so memory stays flat.

    Rows go to a temporary file that replaces the target only on ``commit`` (``publish``); a
    crash leaves the previous partition file untouched (the journal keeps every answer).
    """

    BATCH_ROWS = 2000

    def __init__(self, target: StoredPath):
        self.target = target
        remove_abandoned(target, ".parquet.tmp")  # what a killed run of this partition left
        self._tmp = temporary_beside(target, ".parquet.tmp")
        self._writer = pq.ParquetWriter(self._tmp, prediction_schema())
        self._batch: list[dict] = []
        self.n_rows = 0

    def add(self, row: dict) -> None:
        self._batch.append(row)
        if len(self._batch) >= self.BATCH_ROWS:
            self._flush()

    def add_frame(self, frame: pd.DataFrame) -> None:
        """Rows read back from an earlier partition file (pandas NaN becomes null)."""
        self._flush()
        self._writer.write_table(
            pa.Table.from_pandas(frame[PREDICTION_COLUMNS], schema=prediction_schema(), preserve_index=False)
        )
        self.n_rows += len(frame)

    def _flush(self) -> None:
        if self._batch:
            self._writer.write_table(pa.Table.from_pylist(self._batch, schema=prediction_schema()))
            self.n_rows += len(self._batch)
            self._batch = []

    def commit(self) -> StoredPath:
        self._flush()
        self._writer.close()
        publish(self._tmp, self.target)
        return self.target

    def discard(self) -> None:
        try:
            self._writer.close()  # may fail too (a full disk): the file goes either way
        finally:
            remove_quietly(self._tmp)


def unreadable_parquet(file: StoredPath, copy: str | None = None) -> str | None:
    """Why a Parquet file cannot be read to the end, or None when it can (``copy``: a readable
    copy of it already at hand)."""
    if copy is None:
        with readable_copies([file]) as [name]:
            return unreadable_parquet(file, name)
    try:
        with duckdb.connect() as con:
            con.execute("SELECT * FROM read_parquet(?)", [copy]).fetchall()
    except duckdb.Error as exc:
        return f"{file.name} is unreadable ({str(exc).splitlines()[0][:200]})"
    return None


def partition_of(file: StoredPath) -> tuple[str, str]:
    """(model, prompt) of a file laid out as predictions/model=<m>/prompt=<p>.parquet."""
    return file.parent.name.removeprefix("model="), file.stem.removeprefix("prompt=")


_CONTENT_COLUMNS = "model, prompt, image_sha256, path, label, pred, score, response, error, prompt_hash"
# What answered, in files that record it: answers in the same words from a new snapshot, format
# or cache generation are new content, which the warehouse and the reports follow.
_ANSWERED_BY_COLUMNS = ["served_model", "verdict_format", "cache_generation"]


def predictions_content_hash(files: Sequence[StoredPath]) -> str:
    """A hash of what the partition files say (answers, verdicts, errors, what answered; not
    timestamps): equal for a rerun that found nothing new."""
    with readable_copies([f for f in files if f.exists()]) as names:
        readable = [name for name in names if not unreadable_parquet(Path(name), name)]
        if not readable:
            return "empty"
        with duckdb.connect() as con:
            scan = con.execute("SELECT * FROM read_parquet(?, union_by_name=true) LIMIT 0", [readable])
            present = {column[0] for column in scan.description or []}
            hashed = ", ".join([_CONTENT_COLUMNS, *(c for c in _ANSWERED_BY_COLUMNS if c in present)])
            row = con.execute(
                f"SELECT count(*), sum(hash({hashed})) FROM read_parquet(?, union_by_name=true)", [readable]
            ).fetchone()
    assert row is not None  # an aggregate always returns one row
    return f"{row[0]}-{row[1]}"


def read_manifests(layout: HomeLayout) -> pd.DataFrame:
    files = sorted_glob(layout.manifests_dir, "*.parquet")
    if not files:
        raise NotMaterialized(f"{layout.manifests_dir}: no image manifest yet (materialize image_manifest first)")
    return pd.concat([read_parquet_frame(f) for f in files], ignore_index=True)


def missing_manifests(layout: HomeLayout, dataset_keys: list[str]) -> list[str]:
    """Defined datasets with no manifest file: their images are in no table and no ranking."""
    return [key for key in dataset_keys if not layout.manifest_file(key).exists()]


def missing_manifest_lines(layout: HomeLayout, keys: list[str]) -> list[str]:
    return [
        f"dataset {key!r} has no manifest ({layout.manifest_file(key)}): its images are left out of the "
        "warehouse and the leaderboard until image_manifest scans it again"
        for key in keys
    ]
