"""The figures of the reports and the leaderboard: ROC and reliability charts for runs with scores,
the subset × model matrix for datasets with subsets, and the answer-bias columns."""

import re
import xml.etree.ElementTree as ET

import numpy as np
from crafted import craft, random_rows

from defake_pipeline.reporting.charts import accuracy_color
from defake_pipeline.reporting.render import write_leaderboard, write_report, write_reports
from defake_pipeline.warehouse.database import rebuild_warehouse
from defake_pipeline.warehouse.layout import HomeLayout

SVG = "{http://www.w3.org/2000/svg}"


def svg(path):
    """A chart file parsed as XML (a malformed chart raises here)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return root


def test_scored_runs_get_roc_and_reliability_charts_and_unscored_runs_none(tmp_path):
    rows, scores, shas = random_rows(3, 45)
    generators = [["sd15", "flux", "dalle3"][i % 3] for i in range(len(rows))]
    other = [int(x) for x in np.random.default_rng(1).choice([0, 1], len(rows))]
    craft(tmp_path, rows, scores=scores, shas=shas, subsets=generators, extra_partitions={("m2", "p"): other})
    layout = HomeLayout(tmp_path / "home")
    path, text, ui = write_leaderboard(layout)
    reports = path.parent

    scores_chart = svg(reports / "scores_d.svg")
    curves = scores_chart.findall(f"{SVG}polyline")
    assert len(curves) == 2 * 2  # a ROC curve and a reliability line for each of m × p and m2 × p
    assert "(scores_d.svg)" in text.replace("<", "").replace(">", "")
    # The table gives each scored run's operating points, including m2's 0/1 scores copied from m.
    assert "| `m` | `p` |" in text and "TPR at FPR 1%" in text and "EER (threshold)" in text

    matrix = svg(reports / "matrix_d.svg")
    cells = [t.text for t in matrix.iter(f"{SVG}text") if t.text and "%" in t.text and "(" in t.text]
    assert len(cells) == 2 * 3  # 2 runs × 3 generators, n in each
    assert all(c.endswith("*") for c in cells)  # 15 images a cell: each is marked
    assert "| `m` | `p` |" in text and "**Accuracy per subset**" in text and "dalle3 | flux | sd15" in text

    # The UI form inlines every chart, and links none.
    assert ui.count("data:image/svg+xml;base64,") == 3 and "scores_d.svg" not in ui

    report = write_report(layout, "m", "p")
    own = svg(reports / "m__p__d.scores.svg")
    assert len(own.findall(f"{SVG}polyline")) == 2
    body = report.path.read_text()
    assert "## Scores: calibration and operating points" in body and "m__p__d.scores.svg" in body
    assert "Says real (bias)" in body and " pt)" in body


def test_runs_without_scores_or_subsets_draw_no_such_chart(tmp_path):
    craft(tmp_path, [(1, 1, None), (0, 0, None), (0, 1, None)], subsets=["default"] * 3)
    layout = HomeLayout(tmp_path / "home")
    path, text, _ui = write_leaderboard(layout)
    assert sorted(p.name for p in path.parent.glob("*.svg")) == ["accuracy_d.svg"]
    assert "**Scores**" not in text and "**Accuracy per subset**" not in text
    report = write_report(layout, "m", "p").path.read_text()
    assert "## Scores" not in report and "Says real (bias)" in report


def test_a_chart_left_by_runs_that_lost_their_scores_is_removed(tmp_path):
    rows, scores, shas = random_rows(4, 40)
    craft(tmp_path, rows, scores=scores, shas=shas)
    layout = HomeLayout(tmp_path / "home")
    assert (write_leaderboard(layout)[0].parent / "scores_d.svg").exists()
    craft(tmp_path, rows, shas=shas)  # the same partition, now without scores
    assert not (write_leaderboard(layout)[0].parent / "scores_d.svg").exists()


def test_the_heat_map_runs_from_red_through_white_to_blue():
    assert accuracy_color(0.0) == "#b2182b" and accuracy_color(0.5) == "#f7f7f7" and accuracy_color(1.0) == "#2166ac"


def test_cells_of_twenty_answers_or_more_are_not_marked(tmp_path):
    rows = [(1, 1, None), (0, 0, None)] * 20 + [(1, 0, None)] * 2  # g1: 21 answers, g2: 21
    craft(tmp_path, rows)
    path, text, _ui = write_leaderboard(HomeLayout(tmp_path / "home"))
    cells = [t.text for t in svg(path.parent / "matrix_d.svg").iter(f"{SVG}text") if t.text and "%" in t.text]
    assert cells == ["95% (21)", "95% (21)"]  # unmarked


def test_a_roc_curve_of_thousands_of_distinct_scores_is_drawn_in_a_few_hundred_points(tmp_path):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 3000)
    scores = [float(s) for s in np.clip(0.3 * (labels == 0) + rng.uniform(0, 0.7, 3000), 0, 1)]
    craft(tmp_path, [(int(label), int(label), None) for label in labels], scores=scores)
    path, _text, _ui = write_leaderboard(HomeLayout(tmp_path / "home"))
    roc = svg(path.parent / "scores_d.svg").findall(f"{SVG}polyline")[0]
    points = [tuple(map(float, p.split(","))) for p in roc.get("points").split()]
    assert 100 < len(points) <= 2 * 251 + 1  # 3,000 distinct scores
    xs, ys = [x for x, _y in points], [y for _x, y in points]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)  # both rates rise (SVG's y runs down)


def test_each_chart_file_belongs_to_one_report_and_outlives_the_others(tmp_path):
    """Prompt `p.d` extends prompt `p`'s name with a dot, as a dataset does, and model `scores_x`
    starts as the leaderboard's scores charts do: removing `p`'s report and rendering the
    leaderboard leave every chart the remaining reports link to."""
    rows, scores, shas = random_rows(5, 40)
    preds = [pred for _label, pred, _err in rows]
    craft(tmp_path, rows, scores=scores, shas=shas, extra_partitions={("m", "p.d"): preds, ("scores_x", "p"): preds})
    layout = HomeLayout(tmp_path / "home")
    reports, _ = write_reports(layout)
    assert len(reports) == 3
    (layout.predictions_file("m", "p")).unlink()
    rebuild_warehouse(layout)
    reports, removed = write_reports(layout)
    write_leaderboard(layout)
    assert [r.name for r in removed] == ["m__p.md"]
    assert sorted((r.model, r.prompt) for r in reports) == [("m", "p.d"), ("scores_x", "p")]
    for report in reports:
        linked = re.findall(r"\]\(<?([^)>]+\.svg)>?\)", report.path.read_text())
        assert linked and all((report.path.parent / name).exists() for name in linked), linked
