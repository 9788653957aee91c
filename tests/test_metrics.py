"""Metrics SQL against hand computations on crafted manifests and predictions (real DuckDB files)."""

import pandas as pd
import pytest

from defake_pipeline.core.paths import HomeLayout
from defake_pipeline.core.store import predictions_frame, query, rebuild_warehouse, write_parquet_atomic


def craft(tmp_path, rows):
    """rows: (label, pred, error) per image; all in one dataset and subset."""
    layout = HomeLayout(tmp_path / "home")
    manifest = pd.DataFrame(
        [
            {"dataset": "d", "path": f"/img/{i}.png", "rel_path": f"{i}.png", "label": label, "subset": "g1" if i % 2 else "g2",
             "sha256": f"sha{i}", "size_bytes": 1, "mtime_ns": 1, "width": 1, "height": 1, "format": "PNG",
             "probe_error": None, "provenance": None}
            for i, (label, _pred, _err) in enumerate(rows)
        ]
    )
    write_parquet_atomic(manifest, layout.manifest_file("d"))
    preds = predictions_frame(
        [
            {"image_sha256": f"sha{i}", "path": f"/img/{i}.png", "label": label, "verdict": {1: "real", 0: "fake", -1: "unknown"}[pred],
             "pred": pred, "score": None, "response": "", "turns": "[]", "latency_s": 0.1 * (i + 1), "prompt_tokens": 10,
             "completion_tokens": 2, "cost_usd": 0.001, "n_requests": 1, "error": err, "model": "m", "model_id": "m",
             "prompt": "p", "prompt_hash": "h", "created_at": "t"}
            for i, (label, pred, err) in enumerate(rows)
        ]
    )
    write_parquet_atomic(preds, layout.predictions_file("m", "p"))
    rebuild_warehouse(layout)
    return query(layout, "SELECT * FROM metrics WHERE subset = 'all'").iloc[0]


def test_seed_definitions_with_unknowns_and_errors(tmp_path):
    # reals: 3 right, 1 wrong, 1 unknown, 1 error; fakes: 2 right, 2 wrong
    rows = [(1, 1, None)] * 3 + [(1, 0, None), (1, -1, None), (1, -1, "APIError: 500")] + [(0, 0, None)] * 2 + [(0, 1, None)] * 2
    m = craft(tmp_path, rows)
    assert (m.n_images, m.n_real, m.n_fake, m.n_unknown, m.n_error, m.n_valid) == (10, 6, 4, 1, 1, 8)
    assert m.accuracy == pytest.approx(5 / 8)  # unknowns and errors excluded
    assert m.accuracy_strict == pytest.approx(5 / 9)  # unknown counted wrong, error still excluded
    assert m.precision == pytest.approx(3 / 5)  # real is the positive class
    assert m.recall == pytest.approx(3 / 4) == m.real_accuracy
    assert m.fake_accuracy == pytest.approx(2 / 4)
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m.balanced_accuracy == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert m.unknown_rate == pytest.approx(1 / 9) and m.error_rate == pytest.approx(1 / 10)
    assert m.cost_usd == pytest.approx(0.010)
    assert m.accuracy_low < 5 / 8 < m.accuracy_high


def test_all_unknown_leaves_accuracy_undefined_not_zero(tmp_path):
    m = craft(tmp_path, [(1, -1, None), (0, -1, None)])
    assert pd.isna(m.accuracy) and m.accuracy_strict == 0.0 and m.unknown_rate == 1.0


def test_subsets_and_all_rows(tmp_path):
    layout_rows = [(1, 1, None), (0, 0, None), (1, 0, None), (0, 0, None)]
    craft(tmp_path, layout_rows)
    subsets = query(HomeLayout(tmp_path / "home"), "SELECT subset, n_images, accuracy FROM metrics ORDER BY subset")
    assert subsets.to_dict("list") == {"subset": ["all", "g1", "g2"], "n_images": [4, 2, 2], "accuracy": [0.75, 1.0, 0.5]}
