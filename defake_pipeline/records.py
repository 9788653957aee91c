"""The records, declared once: a prediction (the Parquet schema, the CSV columns and the data
frames derive from it) and a manifest row (the manifest's columns and types derive from it).
Also the one mapping between verdict words and the seed's numeric labels.

Conventions (CNNDetection's, kept by the seed's CSVs): label and pred are 1 real, 0 fake,
-1 unknown. An error (no answer) is never a wrong answer: its verdict is ``unknown`` and its
``error`` says why.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pandas and pyarrow take most of a second to import; `mllmdf infer` does without
    import pandas as pd
    import pyarrow as pa

    from defake_pipeline.storage import StoredPath


Verdict = Literal["real", "fake", "unknown"]
# The prompt key of a baseline's predictions: a baseline reads no prompt, so it is evaluated
# (and ranked) once, not once per prompt. No prompt file's key can be this (see text.slugify).
NO_PROMPT = "-"
PRED_OF_VERDICT: dict[str, int] = {"real": 1, "fake": 0, "unknown": -1}
VERDICT_OF_PRED: dict[int, str] = {pred: verdict for verdict, pred in PRED_OF_VERDICT.items()}
_LABEL_WORDS = {"1": 1, "real": 1, "0": 0, "fake": 0, "generated": 0}


def label_from_text(value: object) -> int | None:
    """A ground-truth label as datasets and CSVs write it: 1/0 (also 1.0/0.0, as pandas reads a
    column with gaps), or real/fake/generated in any case; None for anything else."""
    text = str(value).strip().lower()
    if text in _LABEL_WORDS:
        return _LABEL_WORDS[text]
    return {"1.0": 1, "0.0": 0}.get(text)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Prediction:
    """One image asked of one model with one prompt: a row of a predictions partition, of the
    ``predictions`` warehouse table and of ``mllmdf infer``'s CSV."""

    image_sha256: str
    """The image's content hash, or ``missing:<path>`` for an image that could not be read."""
    path: str
    """Absolute path of the image when it was asked about."""
    label: int
    """Ground truth: 1 real, 0 fake, -1 unknown (``classify`` on an unlabelled image)."""
    verdict: str
    """``real``, ``fake`` or ``unknown``: the last verdict word of the final answer."""
    pred: int
    """The verdict as a number, as in the seed's CSVs: 1 real, 0 fake, -1 unknown."""
    score: float | None
    """P(fake) from the verdict token's log-probabilities, or the baseline's score; else None."""
    response: str
    """The final conversation's answer (cut at the model's ``max_response_chars``)."""
    turns: list[str]
    """Every conversation's answer, in order (stored as a JSON list)."""
    latency_s: float
    """Seconds the endpoint took, summed over the conversations."""
    prompt_tokens: int
    """Input tokens, summed over the conversations."""
    completion_tokens: int
    """Output tokens, summed over the conversations."""
    cost_usd: float
    """Tokens priced at the model's ``price_in``/``price_out``."""
    n_requests: int
    """Requests this run sent for the image (0: every answer came from the journal)."""
    refused: bool
    """The model declined to answer (its refusal is the response; the verdict is unknown)."""
    error: str | None
    """Why the image got no answer (after retries), or None."""
    model: str
    """The model's partition key."""
    model_id: str
    """The id the endpoint serves the model under."""
    prompt: str
    """The prompt's partition key."""
    prompt_hash: str
    """A hash of the prompt file's content, so an edited prompt is told apart."""
    created_at: str = field(default_factory=_now)
    """When the prediction was made (UTC, ISO 8601)."""
    served_model: str | None = None
    """The model the endpoint says answered the final turn (the completion's ``model``: a dated
    snapshot such as ``gpt-4o-2024-08-06``; vLLM's served id); None for a baseline, or an answer
    journaled before it was recorded."""
    system_fingerprint: str | None = None
    """The final answer's ``system_fingerprint``, where the API sends one."""
    verdict_format: str | None = None
    """How the final answer was constrained: ``seed`` (free text), ``json_schema`` or ``choice``;
    None for a baseline."""
    cache_generation: int | None = None
    """The partition's cache generation the answer belongs to: 0 until a drift canary begins a
    new one (``on_drift = "reevaluate"``); None for a baseline."""

    def as_row(self) -> dict:
        # Every field is a scalar but the turns, which the warehouse stores as JSON text.
        row = {name: getattr(self, name) for name in PREDICTION_COLUMNS}
        row["turns"] = json.dumps(self.turns, ensure_ascii=False)
        return row


@dataclass(frozen=True)
class ManifestRow:
    """One image of a dataset's manifest: where it is, how it is labelled, and what its bytes say
    it is (``imaging.probe``)."""

    dataset: str
    """The dataset's key."""
    path: str
    """Absolute path of the image."""
    rel_path: str
    """The path below the dataset's folder, as reports show it."""
    label: int
    """1 real, 0 fake."""
    subset: str | None
    """The subset (a generator's name, say) the layout files the image under."""
    sha256: str | None
    """The content hash; None for a file that could not be read."""
    size_bytes: int | None
    mtime_ns: int | None
    """Size and modification time: a rescan trusts an unchanged pair and reads nothing."""
    width: int | None
    height: int | None
    format: str | None
    """The format read from the content, whatever the suffix."""
    probe_error: str | None
    """Why the image cannot be asked about, or None."""
    provenance: str | None
    """Generator metadata found in the file (PNG text, EXIF software, C2PA), as JSON."""


MANIFEST_COLUMNS = [f.name for f in fields(ManifestRow)]
# pandas types of the manifest frame: a whole number that may be missing is a nullable Int64.
MANIFEST_DTYPES = {"label": "int64"} | {f.name: "Int64" for f in fields(ManifestRow) if f.type == "int | None"}


@dataclass(frozen=True)
class ImageJob:
    """One image to evaluate: where it is, what it is, and what it is labelled."""

    path: StoredPath
    key: str  # the content's sha256, or missing:<path> for an image that could not be read
    label: int = -1  # 1 real, 0 fake, -1 unknown
    probe_error: str | None = None


def job_key(sha256: str | None, path: str) -> str:
    """The key an image's predictions are stored under: its sha256, or its path when unreadable.

    pandas' string columns hold a missing sha256 as NaN (truthy), so test for a real string."""
    return sha256 if isinstance(sha256, str) and sha256 else f"missing:{path}"


def _arrow_type(annotation: str) -> pa.DataType:
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "list[str]": pa.string()}
    return types[annotation.replace(" | None", "")]


@functools.cache
def prediction_schema() -> pa.Schema:
    """The Arrow schema of a prediction row (built on first use: pyarrow is not needed to run
    ``mllmdf infer``, and importing it costs a tenth of a second)."""
    import pyarrow as pa

    return pa.schema([(f.name, _arrow_type(str(f.type))) for f in fields(Prediction)])


PREDICTION_COLUMNS = [f.name for f in fields(Prediction)]
# The seed's CSV columns come first in `mllmdf infer` CSVs (and in the CSV beside each report).
SEED_CSV_COLUMNS = ["path", "label", "pred", "response"]
CSV_COLUMNS = SEED_CSV_COLUMNS + [c for c in PREDICTION_COLUMNS if c not in SEED_CSV_COLUMNS]


def predictions_frame(rows: list[dict]) -> pd.DataFrame:
    """Prediction rows as a data frame typed by the schema (empty rows give typed columns)."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=prediction_schema()).to_pandas()
