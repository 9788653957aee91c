"""Metrics SQL against hand computations on crafted manifests and predictions (real DuckDB files)."""

import pandas as pd
import pytest
from crafted import craft

from defake_pipeline.warehouse.database import query
from defake_pipeline.warehouse.layout import HomeLayout


def test_seed_definitions_with_unknowns_and_errors(tmp_path):
    # reals: 3 right, 1 wrong, 1 unknown, 1 error; fakes: 2 right, 2 wrong
    rows = (
        [(1, 1, None)] * 3
        + [(1, 0, None), (1, -1, None), (1, -1, "APIError: 500")]
        + [(0, 0, None)] * 2
        + [(0, 1, None)] * 2
    )
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
    assert m.cost_usd == pytest.approx(0.010) and m.total_tokens == 10 * (10 + 2)
    # Latencies 0.1 … 1.0 s, the errored 0.6 s left out: median 0.5, p95 interpolated 0.9 → 1.0.
    assert m.latency_p50_s == pytest.approx(0.5) and m.latency_p95_s == pytest.approx(0.96)
    assert m.accuracy_low < 5 / 8 < m.accuracy_high


def test_all_unknown_leaves_accuracy_undefined_not_zero(tmp_path):
    m = craft(tmp_path, [(1, -1, None), (0, -1, None)])
    assert pd.isna(m.accuracy) and m.accuracy_strict == 0.0 and m.unknown_rate == 1.0


def test_subsets_and_all_rows(tmp_path):
    layout_rows = [(1, 1, None), (0, 0, None), (1, 0, None), (0, 0, None)]
    craft(tmp_path, layout_rows)
    subsets = query(
        HomeLayout(tmp_path / "home"), "SELECT scope, subset, n_images, accuracy FROM metrics ORDER BY scope, subset"
    )
    assert subsets.fillna("–").to_dict("list") == {
        "scope": ["dataset", "subset", "subset"],
        "subset": ["–", "g1", "g2"],
        "n_images": [4, 2, 2],
        "accuracy": [0.75, 1.0, 0.5],
    }


def test_a_subset_named_all_keeps_its_own_row(tmp_path):
    # Generator folders sdxl/ and all/: the whole-dataset row must not merge with the subset "all".
    rows = [(0, 0, None), (0, 0, None), (0, 1, None), (1, 1, None)] + [(0, 1, None)] * 3 + [(1, 1, None)]
    whole = craft(tmp_path, rows, subsets=["sdxl"] * 4 + ["all"] * 4)
    assert (whole.scope, whole.subset, whole.n_images, whole.accuracy) == ("dataset", None, 8, 0.5)
    layout = HomeLayout(tmp_path / "home")
    by_subset = query(layout, "SELECT subset, n_images, accuracy FROM metrics WHERE scope = 'subset' ORDER BY subset")
    assert by_subset.to_dict("list") == {"subset": ["all", "sdxl"], "n_images": [4, 4], "accuracy": [0.25, 0.75]}


def test_comparisons_pair_each_content_once_and_leave_out_leaks(tmp_path):
    from defake_pipeline.reporting.render import write_leaderboard

    # Content A at three paths (fake), B filed as real and as fake (a leak), C once (real).
    shas = ["A", "A", "A", "B", "B", "C"]
    rows = [(0, 0, None)] * 3 + [(1, 1, None), (0, 1, None), (1, 1, None)]
    other = [1, 1, 1, 0, 0, 1]  # m2: wrong on A, right on C
    craft(tmp_path, rows, shas=shas, extra_partitions={("m2", "p"): other})
    layout = HomeLayout(tmp_path / "home")
    row = query(layout, "SELECT * FROM comparisons").iloc[0]
    assert (row.n_images, row.both_right, row.only_a_right, row.only_b_right, row.both_wrong) == (2, 1, 1, 0, 0)
    _path, text, _ui = write_leaderboard(layout)
    assert "content filed under both labels is left out (1 such image in this dataset)" in text


def test_perfect_and_inverted_predictions(tmp_path):
    perfect = craft(tmp_path / "a", [(1, 1, None), (1, 1, None), (0, 0, None)])
    assert (perfect.accuracy, perfect.precision, perfect.recall, perfect.f1, perfect.balanced_accuracy) == (
        1,
        1,
        1,
        1,
        1,
    )
    inverted = craft(tmp_path / "b", [(1, 0, None), (1, 0, None), (0, 1, None)])
    assert (inverted.accuracy, inverted.precision, inverted.recall, inverted.real_accuracy, inverted.fake_accuracy) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert inverted.f1 == 0 and inverted.accuracy_high < 0.6


def test_one_class_missing(tmp_path):
    m = craft(tmp_path, [(1, 1, None), (1, 0, None)], scores=[0.2, 0.7])
    assert m.n_fake == 0 and m.accuracy == 0.5 and m.real_accuracy == 0.5
    assert pd.isna(m.fake_accuracy) and pd.isna(m.balanced_accuracy)
    assert pd.isna(m.auc) and pd.isna(m.average_precision)  # no fake images: undefined, not 0


@pytest.mark.parametrize(
    ("fake_scores", "real_scores", "auc", "ap"),
    [
        ([0.9, 0.8], [0.1, 0.2], 1.0, 1.0),  # perfect ranking
        ([0.1, 0.2], [0.9, 0.8], 0.0, 0.5 * (1 / 3) + 0.5 * (2 / 4)),  # inverted
        ([0.5, 0.5], [0.5, 0.5], 0.5, 0.5),  # all tied
        ([0.8, 0.5], [0.5, 0.2], 3.5 / 4, 0.5 * 1 + 0.5 * (2 / 3)),  # one tie across classes counts half
    ],
)
def test_auc_and_average_precision_by_hand(tmp_path, fake_scores, real_scores, auc, ap):
    rows = [(0, 0, None)] * len(fake_scores) + [(1, 1, None)] * len(real_scores)
    m = craft(tmp_path, rows, scores=fake_scores + real_scores)
    assert m.n_scored == 4
    assert m.auc == pytest.approx(auc) and m.average_precision == pytest.approx(ap)


def test_errors_carry_no_score_into_auc(tmp_path):
    m = craft(tmp_path, [(0, 0, None), (1, 1, None), (0, -1, "APIError: 500")], scores=[0.9, 0.1, 0.0])
    assert m.n_scored == 2 and m.auc == 1.0


def test_wilson_interval_by_hand(tmp_path):
    m = craft(tmp_path, [(1, 1, None)] * 8 + [(1, 0, None)] * 2)
    z, n, p = 1.959963984540054, 10, 0.8
    centre, half = (
        (p + z * z / (2 * n)) / (1 + z * z / n),
        z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n),
    )
    assert m.accuracy_low == pytest.approx(centre - half) and m.accuracy_high == pytest.approx(centre + half)
    assert m.real_accuracy_low == pytest.approx(centre - half)


def test_mcnemar_exact_and_comparison_table(tmp_path):
    from defake_pipeline.warehouse.metrics_sql import mcnemar_exact_p

    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0
    # m/p right on all 12; m2/p right on 2 of them: only_a_right = 10, only_b_right = 0.
    rows = [(1, 1, None)] * 6 + [(0, 0, None)] * 6
    other = [1, 1] + [0] * 4 + [1] * 6  # right on 2 reals, wrong on 4 reals and on all 6 fakes
    craft(tmp_path, rows, extra_partitions={("m2", "p"): other})
    table = query(HomeLayout(tmp_path / "home"), "SELECT * FROM comparisons")
    row = table.iloc[0]
    assert (row.model_a, row.model_b, row.n_images, row.both_right, row.only_a_right, row.only_b_right) == (
        "m",
        "m2",
        12,
        2,
        10,
        0,
    )
    assert row.mcnemar_p == pytest.approx(2 / 1024)


def test_a_reading_block_reads_one_warehouse_and_the_next_query_the_one_renamed_in_meanwhile(tmp_path):
    """Publishing holds one read-only connection; a rebuild another process renames into place
    meanwhile is not mixed into it, and is what the next query reads: DuckDB hands a connection
    to a path the database already open there, so the block must not outlive its work."""
    import os

    import duckdb

    from defake_pipeline.warehouse.database import reading

    layout = HomeLayout(tmp_path)

    def build(path, version: int) -> None:
        with duckdb.connect(str(path)) as con:
            con.execute(f"CREATE TABLE metrics AS SELECT {version} AS version")

    build(layout.warehouse, 1)
    with reading(layout):
        assert query(layout, "SELECT version FROM metrics").version.tolist() == [1]
        build(tmp_path / "rebuilt.duckdb", 2)
        os.replace(tmp_path / "rebuilt.duckdb", layout.warehouse)
        assert query(layout, "SELECT version FROM metrics").version.tolist() == [1]
    assert query(layout, "SELECT version FROM metrics").version.tolist() == [2]
