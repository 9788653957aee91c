"""The answer-bias, calibration and operating-point metrics against scikit-learn and numpy, on
randomized manifests with tied scores, duplicated contents, unknown verdicts and errors."""

import numpy as np
import pandas as pd
import pytest
from crafted import craft, random_rows
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from defake_pipeline.warehouse.metrics_sql import ECE_BINS


def reference_frame(rows, scores, shas) -> pd.DataFrame:
    """Each manifest row with the prediction the warehouse joins to it: its content's first answer."""
    first = {}
    for (_label, pred, err), score, sha in zip(rows, scores, shas, strict=True):
        first.setdefault(sha, (pred, score, err))
    frame = pd.DataFrame(
        [
            {"label": label, "pred": first[sha][0], "score": first[sha][1], "error": first[sha][2]}
            for (label, _p, _e), sha in zip(rows, shas, strict=True)
        ]
    )
    return frame[frame.error.isna()]


def numpy_ece(fake: np.ndarray, score: np.ndarray) -> float:
    bins = np.minimum(np.floor(score * ECE_BINS), ECE_BINS - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(score[inside].mean() - fake[inside].mean())
    return total / len(score)


def on_polyline(x: float, y: float, xs: np.ndarray, ys: np.ndarray) -> bool:
    """Whether (x, y) lies on the curve through the points (xs, ys), joined by straight lines."""
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:], strict=False):
        within = min(x0, x1) - 1e-12 <= x <= max(x0, x1) + 1e-12 and min(y0, y1) - 1e-12 <= y <= max(y0, y1) + 1e-12
        if within and abs((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) < 1e-9:
            return True
    return False


@pytest.mark.parametrize("seed", range(6))
def test_score_and_bias_metrics_match_sklearn_and_numpy(tmp_path, seed):
    rows, scores, shas = random_rows(seed)
    m = craft(tmp_path, rows, scores=scores, shas=shas)
    ref = reference_frame(rows, scores, shas)
    fake, score = (ref.label == 0).to_numpy(int), ref.score.to_numpy()
    assert m.n_scored == len(ref)

    valid = ref[ref.pred != -1]
    assert m.real_answer_rate == pytest.approx((valid.pred == 1).mean(), abs=1e-9)
    assert m.real_answer_bias == pytest.approx((valid.pred == 1).mean() - (valid.label == 1).mean(), abs=1e-9)

    assert m.auc == pytest.approx(roc_auc_score(fake, score), abs=1e-9)
    assert m.average_precision == pytest.approx(average_precision_score(fake, score), abs=1e-9)
    assert m.brier == pytest.approx(brier_score_loss(fake, score), abs=1e-9)
    assert m.ece == pytest.approx(numpy_ece(fake, score), abs=1e-9)

    fpr, tpr, thresholds = roc_curve(fake, score, drop_intermediate=False)
    assert m.tpr_at_fpr_01 == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-9)
    assert m.tpr_at_fpr_05 == pytest.approx(tpr[fpr <= 0.05].max(), abs=1e-9)
    # The EER point is where the ROC polyline meets FPR = FNR, and the threshold is the first
    # scikit-learn threshold whose point is past it.
    assert on_polyline(m.eer, 1 - m.eer, fpr, tpr)
    past = fpr + tpr >= 1
    assert m.eer_threshold == pytest.approx(thresholds[past][0], abs=1e-9)
    assert 0 < m.eer < 0.5


def test_score_metrics_are_undefined_without_both_classes_or_without_scores(tmp_path):
    one_class = craft(tmp_path / "a", [(1, 1, None), (1, 0, None)], scores=[0.2, 0.7])
    assert pd.isna(one_class.eer) and pd.isna(one_class.tpr_at_fpr_01)
    assert one_class.brier == pytest.approx((0.2**2 + 0.7**2) / 2)  # calibration needs no second class
    unscored = craft(tmp_path / "b", [(1, 1, None), (0, 1, None)])
    assert pd.isna(unscored.ece) and pd.isna(unscored.brier) and pd.isna(unscored.auc)
    assert unscored.real_answer_rate == 1.0 and unscored.real_answer_bias == 0.5


def test_a_perfect_ranking_has_no_error_at_any_operating_point(tmp_path):
    m = craft(tmp_path, [(0, 0, None)] * 3 + [(1, 1, None)] * 3, scores=[0.9, 0.8, 0.8, 0.3, 0.2, 0.2])
    assert (m.tpr_at_fpr_01, m.tpr_at_fpr_05, m.eer, m.eer_threshold) == (1.0, 1.0, 0.0, 0.8)
