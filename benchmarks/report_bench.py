"""Report and metrics benchmark: a report over 100k predictions, a publish of 60 reports of 1,000
predictions each, and metrics over 1M rows.

Prints JSON. The rows are synthetic (random labels, verdicts and scores) but go through the
same Parquet files, warehouse rebuild, SQL and templates as a real run.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from defake_pipeline.datasets.manifest import MANIFEST_COLUMNS
from defake_pipeline.records import predictions_frame
from defake_pipeline.reporting.render import write_leaderboard, write_report, write_reports
from defake_pipeline.warehouse.database import create_metrics, rebuild_warehouse
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.parquet import write_parquet_atomic

REPO = Path(__file__).resolve().parents[1]


def synthetic(n: int, model: str = "m", prompt: str = "p", seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    demo = sorted(str(p) for p in (REPO / "demo").rglob("*.*") if p.suffix in (".jpg", ".png"))
    label = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.8, label, 1 - label)
    pred = np.where(rng.random(n) < 0.05, -1, pred)
    sha = [f"{i:064x}" for i in range(n)]
    paths = [demo[i % len(demo)] for i in range(n)]
    manifest = pd.DataFrame({c: [None] * n for c in MANIFEST_COLUMNS}).assign(
        dataset="bench",
        path=paths,
        rel_path=[f"{i}.jpg" for i in range(n)],
        label=label,
        subset=rng.choice(["sd15", "sdxl", "mj", "dalle"], n),
        sha256=sha,
    )
    error = np.where(rng.random(n) < 0.01, "APIError: 500", None)
    preds = (
        predictions_frame([])
        .reindex(range(n))
        .assign(
            image_sha256=sha,
            path=paths,
            label=label,
            pred=pred,
            verdict=pd.Series(pred).map({1: "real", 0: "fake", -1: "unknown"}),
            score=rng.random(n),
            response="It looks generated: smooth textures | odd hands\nreal? no.",
            turns="[]",
            latency_s=rng.random(n),
            prompt_tokens=900,
            completion_tokens=12,
            cost_usd=0.0025,
            n_requests=1,
            error=error,
            model=model,
            model_id=model,
            prompt=prompt,
            prompt_hash="h",
            created_at="t",
        )
    )
    return manifest, preds


def timed(fn):
    started = time.perf_counter()
    fn()
    return round(time.perf_counter() - started, 2)


def publish_many(n_models: int = 6, n_prompts: int = 10, rows: int = 1000) -> dict:
    """What the daemon's publish step does after a change: every report checked, and rendered
    again where its rows changed (here all of them: their record is removed first)."""
    layout = HomeLayout(Path(tempfile.mkdtemp(prefix="defake-publish-")))
    write_parquet_atomic(synthetic(rows)[0], layout.manifest_file("bench"))
    for m in range(n_models):
        for p in range(n_prompts):
            preds = synthetic(rows, f"m{m}", f"p{p}", seed=m * n_prompts + p)[1]
            write_parquet_atomic(preds, layout.predictions_file(f"m{m}", f"p{p}"))
    rebuild_warehouse(layout)
    out = {"publish_reports": n_models * n_prompts, "publish_first_s": timed(lambda: write_reports(layout))}
    out["publish_unchanged_s"] = timed(lambda: write_reports(layout))
    (layout.reports_dir / ".inputs.json").unlink()
    out["publish_all_changed_s"] = timed(lambda: write_reports(layout))
    return out


def main() -> None:
    layout = HomeLayout(Path(tempfile.mkdtemp(prefix="defake-report-")))
    manifest, preds = synthetic(100_000)
    write_parquet_atomic(manifest, layout.manifest_file("bench"))
    write_parquet_atomic(preds, layout.predictions_file("m", "p"))
    out = {"report_rows": len(preds)}
    out["warehouse_rebuild_100k_s"] = timed(lambda: rebuild_warehouse(layout))
    out["report_100k_first_s"] = timed(lambda: write_report(layout, "m", "p"))  # makes 600 thumbnails
    out["report_100k_again_s"] = timed(lambda: write_report(layout, "m", "p"))
    out["leaderboard_s"] = timed(lambda: write_leaderboard(layout))
    out["report_md_bytes"] = layout.report_file("m", "p").stat().st_size
    # The ROC and reliability chart of 100k scored images, as a file and inlined in the UI's markdown.
    out["scores_chart_bytes"] = (layout.reports_dir / "scores_bench.svg").stat().st_size
    out["leaderboard_ui_md_bytes"] = len(write_leaderboard(layout)[2])

    out.update(publish_many())

    big_manifest, big_preds = synthetic(1_000_000, seed=1)
    with duckdb.connect() as con:
        con.register("m_frame", big_manifest)
        con.register("p_frame", big_preds)
        con.execute("CREATE TABLE image_manifest AS SELECT * FROM m_frame")
        con.execute("CREATE TABLE predictions AS SELECT * FROM p_frame")
        out["metrics_rows"] = 1_000_000
        out["metrics_1m_s"] = timed(lambda: create_metrics(con))
        out["metrics_1m_groups"] = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
