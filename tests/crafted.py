"""Warehouses crafted row by row, for the metrics and report tests: real parquet partitions and a
real DuckDB file, built the way the pipeline builds them."""

import numpy as np
import pandas as pd

from defake_pipeline.records import VERDICT_OF_PRED, predictions_frame
from defake_pipeline.warehouse.database import query, rebuild_warehouse
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.parquet import write_parquet_atomic


def craft(tmp_path, rows, scores=None, extra_partitions=None, subsets=None, shas=None):
    """rows: (label, pred, error) per image in dataset d, model m, prompt p; scores: P(fake) per row.
    extra_partitions: {(model, prompt): [pred per row]} for comparisons on the same images.
    subsets / shas: per row (default: g1/g2 alternating, and a distinct content per row); rows
    sharing a sha are one content, answered once (the first row's prediction)."""
    layout = HomeLayout(tmp_path / "home")
    subsets = subsets or ["g1" if i % 2 else "g2" for i in range(len(rows))]
    shas = shas or [f"sha{i}" for i in range(len(rows))]
    manifest = pd.DataFrame(
        [
            {
                "dataset": "d",
                "path": f"/img/{i}.png",
                "rel_path": f"{i}.png",
                "label": label,
                "subset": subsets[i],
                "sha256": shas[i],
                "size_bytes": 1,
                "mtime_ns": 1,
                "width": 1,
                "height": 1,
                "format": "PNG",
                "probe_error": None,
                "provenance": None,
            }
            for i, (label, _pred, _err) in enumerate(rows)
        ]
    )
    write_parquet_atomic(manifest, layout.manifest_file("d"))
    preds = predictions_frame(
        [
            {
                "image_sha256": shas[i],
                "path": f"/img/{i}.png",
                "label": label,
                "verdict": VERDICT_OF_PRED[pred],
                "pred": pred,
                "score": scores[i] if scores else None,
                "response": "",
                "turns": "[]",
                "latency_s": 0.1 * (i + 1),
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "cost_usd": 0.001,
                "n_requests": 1,
                "error": err,
                "model": "m",
                "model_id": "m",
                "prompt": "p",
                "prompt_hash": "h",
                "created_at": "t",
            }
            for i, (label, pred, err) in enumerate(rows)
        ]
    )
    write_parquet_atomic(preds.drop_duplicates("image_sha256"), layout.predictions_file("m", "p"))
    for (model, prompt), other_preds in (extra_partitions or {}).items():
        other = preds.assign(pred=other_preds, model=model, prompt=prompt, error=None).drop_duplicates("image_sha256")
        write_parquet_atomic(other, layout.predictions_file(model, prompt))
    rebuild_warehouse(layout)
    return query(layout, "SELECT * FROM metrics WHERE scope = 'dataset'").iloc[0]


def random_rows(seed: int, n: int = 300):
    """Rows, scores and contents: scores on a 0.05 grid (many ties), about a fifth of the
    contents held by two paths (a content is answered once: its first row's prediction)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # Scores lean toward the truth, so the curves are neither trivial nor random.
    scores = np.clip(np.round((0.35 * (labels == 0) + rng.uniform(0, 0.65, n)) / 0.05) * 0.05, 0, 1)
    preds = np.where(rng.uniform(size=n) < 0.1, -1, np.where(scores >= 0.5, 0, 1))
    errors = [("APIError: 500" if u < 0.05 else None) for u in rng.uniform(size=n)]
    shas = [f"sha{i if rng.uniform() > 0.2 else rng.integers(0, max(i, 1))}" for i in range(n)]
    rows = [
        (int(label), int(pred) if err is None else -1, err)
        for label, pred, err in zip(labels, preds, errors, strict=True)
    ]
    return rows, [float(s) for s in scores], shas
