"""Metrics, computed in DuckDB SQL over the ``scored`` view (manifest rows joined to predictions).

Conventions, as in the seed: label/pred 1 = real, 0 = fake, -1 = unknown; real is the
positive class for precision and recall; ``accuracy`` excludes unknown verdicts.
``accuracy_strict`` counts each unknown as wrong. Errors (no answer from the endpoint, or
an unreadable image) are never counted as wrong answers: they are excluded from every
accuracy and reported as ``n_error`` and ``error_rate``.

Answer bias: ``real_answer_rate`` is the share of valid answers that say real, and
``real_answer_bias`` that rate minus the share of real labels among the same images (0 for an
unbiased detector, positive when it calls fakes real more than reals fake; it is (fp - fn) / n).

Scores are P(fake), so fake is the positive class of every score metric: AUC, average
precision, the Brier score, ``ece`` (expected calibration error over ``ECE_BINS`` equal-width bins
of the score, each weighted by its share of the images), the true-positive rate at a false-positive
rate of at most 1% and 5% (the best ROC point within it), and the equal error rate ``eer`` where the
ROC curve, its points joined by straight lines, crosses FPR = FNR; ``eer_threshold`` is the score at
or above which an image is called fake at the first ROC point past that crossing.
"""

import math

# The whole-dataset row has scope 'dataset' and subset NULL, so no real subset name (a generator
# folder may well be called "all") can merge into it; per-subset rows have scope 'subset'.
DATASET_SCOPE = "dataset"
SUBSET_SCOPE = "subset"
WILSON_Z = 1.959963984540054  # two-sided 95%
ECE_BINS = 10
ECE_BIN_SQL = f"least(floor(score * {ECE_BINS}), {ECE_BINS - 1})"  # bins [0, 0.1), ..., [0.9, 1]
# The two rates, over columns n_images, n_error and n_unknown; the gate uses them too.
ERROR_RATE_SQL = "n_error::DOUBLE / nullif(n_images, 0)"  # no answer, over all images
UNKNOWN_RATE_SQL = "n_unknown::DOUBLE / nullif(n_images - n_error, 0)"  # no verdict, over the answered
REFUSAL_RATE_SQL = "n_refused::DOUBLE / nullif(n_images - n_error, 0)"  # declined, over the answered

SCORED_VIEW_SQL = """
CREATE OR REPLACE VIEW scored AS
SELECT
    m.dataset, m.subset, m.path, m.rel_path, m.label, m.sha256,
    p.model, p.prompt, p.prompt_hash, p.verdict, p.pred, p.score, p.response, p.error,
    p.latency_s, p.prompt_tokens, p.completion_tokens, p.cost_usd, p.created_at,
    p.served_model, p.verdict_format, p.cache_generation,
    p.error IS NOT NULL AS is_error,
    p.error IS NULL AND coalesce(p.refused, false) AS is_refused,
    p.error IS NULL AND p.pred = -1 AS is_unknown,
    p.error IS NULL AND p.pred <> -1 AS is_valid
FROM image_manifest AS m
JOIN predictions AS p ON p.image_sha256 = coalesce(m.sha256, 'missing:' || m.path)
"""


def _wilson(successes: str, trials: str, sign: str) -> str:
    z = WILSON_Z
    p = f"({successes})::DOUBLE / nullif({trials}, 0)"
    n = f"nullif({trials}, 0)"
    return f"(({p}) + {z * z}/(2*{n}) {sign} {z}*sqrt(({p})*(1-({p}))/{n} + {z * z}/(4*{n}*{n}))) / (1 + {z * z}/{n})"


_GROUP = "dataset, model, prompt, scope, grp"

METRICS_SQL = f"""
WITH grouped AS (
    -- Every row counts in its own subset and in the whole-dataset row.
    SELECT *, '{SUBSET_SCOPE}' AS scope, subset AS grp FROM scored
    UNION ALL
    SELECT *, '{DATASET_SCOPE}' AS scope, NULL::VARCHAR AS grp FROM scored
), counts AS (
    SELECT
        {_GROUP},
        any_value(prompt_hash) AS prompt_hash,
        count(*) AS n_images,
        count(*) FILTER (WHERE label = 1) AS n_real,
        count(*) FILTER (WHERE label = 0) AS n_fake,
        count(*) FILTER (WHERE is_unknown) AS n_unknown,
        count(*) FILTER (WHERE is_refused) AS n_refused,
        count(*) FILTER (WHERE is_error) AS n_error,
        count(*) FILTER (WHERE is_valid) AS n_valid,
        count(*) FILTER (WHERE is_valid AND label = 1 AND pred = 1) AS tp,
        count(*) FILTER (WHERE is_valid AND label = 0 AND pred = 0) AS tn,
        count(*) FILTER (WHERE is_valid AND label = 0 AND pred = 1) AS fp,
        count(*) FILTER (WHERE is_valid AND label = 1 AND pred = 0) AS fn,
        count(score) FILTER (WHERE NOT is_error) AS n_scored,
        coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
        coalesce(sum(completion_tokens), 0) AS completion_tokens,
        coalesce(sum(cost_usd), 0) AS cost_usd,
        quantile_cont(latency_s, 0.5) FILTER (WHERE NOT is_error) AS latency_p50_s,
        quantile_cont(latency_s, 0.95) FILTER (WHERE NOT is_error) AS latency_p95_s
    FROM grouped
    GROUP BY {_GROUP}
), thresholds AS (
    -- Scores are P(fake): fake (label 0) is the positive class of AUC and average precision.
    -- One row per distinct score, counting the fakes (pos) and reals (neg) that share it.
    SELECT {_GROUP}, score, count(*) FILTER (WHERE label = 0) AS pos, count(*) FILTER (WHERE label = 1) AS neg
    FROM grouped WHERE NOT is_error AND score IS NOT NULL
    GROUP BY {_GROUP}, score
), cumulative AS (
    SELECT *,
        sum(pos) OVER down AS tp_at, sum(neg) OVER down AS fp_at,  -- at or above this score
        sum(pos) OVER whole AS n_pos, sum(neg) OVER whole AS n_neg
    FROM thresholds
    WINDOW down AS (PARTITION BY {_GROUP} ORDER BY score DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
           whole AS (PARTITION BY {_GROUP})
), ranking AS (
    SELECT {_GROUP},
        -- AUC (Mann-Whitney U): each fake beats the reals scored below it; a tie counts half.
        sum(pos * ((n_neg - fp_at) + 0.5 * neg))::DOUBLE / nullif(any_value(n_pos) * any_value(n_neg), 0) AS auc,
        -- Average precision as scikit-learn defines it: sum over thresholds of (R_n - R_n-1) * P_n.
        sum(pos::DOUBLE / nullif(n_pos, 0) * tp_at / (tp_at + fp_at) ORDER BY score) AS average_precision
    FROM cumulative GROUP BY {_GROUP}
), roc AS (
    -- Each distinct score is a ROC point; the origin (nothing called fake) precedes the first.
    SELECT {_GROUP}, score, fpr, tpr,
        coalesce(lag(fpr) OVER down, 0) AS fpr_before, coalesce(lag(tpr) OVER down, 0) AS tpr_before
    FROM (
        SELECT {_GROUP}, score, fp_at::DOUBLE / nullif(n_neg, 0) AS fpr, tp_at::DOUBLE / nullif(n_pos, 0) AS tpr
        FROM cumulative
    )
    WINDOW down AS (PARTITION BY {_GROUP} ORDER BY score DESC)
), operating_points AS (
    SELECT {_GROUP},
        -- The origin is always a ROC point, so a rate with no point within the bound is 0.
        coalesce(max(tpr) FILTER (WHERE fpr <= 0.01), 0) AS tpr_at_fpr_01,
        coalesce(max(tpr) FILTER (WHERE fpr <= 0.05), 0) AS tpr_at_fpr_05,
        -- FPR + TPR - 1 (FPR - FNR) rises along the curve: the first point where it is >= 0 ends
        -- the segment that crosses FPR = FNR, and the crossing is interpolated on that segment.
        arg_max(
            fpr_before + (1 - fpr_before - tpr_before) / ((fpr + tpr) - (fpr_before + tpr_before)) * (fpr - fpr_before),
            score
        ) FILTER (WHERE fpr + tpr >= 1) AS eer,
        max(score) FILTER (WHERE fpr + tpr >= 1) AS eer_threshold
    FROM roc WHERE fpr IS NOT NULL AND tpr IS NOT NULL
    GROUP BY {_GROUP}
), calibration_bins AS (
    -- From the distinct scores, whose counts are integers, with sums in score order: a float sum
    -- in the order rows happen to arrive could differ in its last bits from one build to the next.
    SELECT {_GROUP}, sum(pos + neg) AS n, sum((pos + neg) * score ORDER BY score) / sum(pos + neg) AS mean_score,
        sum(pos)::DOUBLE / sum(pos + neg) AS fake_share,
        sum(pos * (1 - score) ^ 2 + neg * score ^ 2 ORDER BY score) AS squared_error
    FROM thresholds
    GROUP BY {_GROUP}, {ECE_BIN_SQL}
), calibration AS (
    SELECT {_GROUP},
        sum(n * abs(mean_score - fake_share) ORDER BY mean_score) / sum(n) AS ece,
        sum(squared_error ORDER BY mean_score) / sum(n) AS brier
    FROM calibration_bins GROUP BY {_GROUP}
)
SELECT
    c.dataset, c.model, c.prompt, c.scope, c.grp AS subset, prompt_hash,
    n_images, n_real, n_fake, n_unknown, n_refused, n_error, n_valid, tp, tn, fp, fn,
    (tp + tn)::DOUBLE / nullif(n_valid, 0) AS accuracy,
    {_wilson("tp + tn", "n_valid", "-")} AS accuracy_low,
    {_wilson("tp + tn", "n_valid", "+")} AS accuracy_high,
    (tp + tn)::DOUBLE / nullif(n_images - n_error, 0) AS accuracy_strict,
    {_wilson("tp + tn", "n_images - n_error", "-")} AS accuracy_strict_low,
    {_wilson("tp + tn", "n_images - n_error", "+")} AS accuracy_strict_high,
    tp::DOUBLE / nullif(tp + fp, 0) AS precision,
    tp::DOUBLE / nullif(tp + fn, 0) AS recall,
    2.0 * tp / nullif(2 * tp + fp + fn, 0) AS f1,
    tp::DOUBLE / nullif(tp + fn, 0) AS real_accuracy,
    {_wilson("tp", "tp + fn", "-")} AS real_accuracy_low,
    {_wilson("tp", "tp + fn", "+")} AS real_accuracy_high,
    tn::DOUBLE / nullif(tn + fp, 0) AS fake_accuracy,
    {_wilson("tn", "tn + fp", "-")} AS fake_accuracy_low,
    {_wilson("tn", "tn + fp", "+")} AS fake_accuracy_high,
    (tp::DOUBLE / nullif(tp + fn, 0) + tn::DOUBLE / nullif(tn + fp, 0)) / 2 AS balanced_accuracy,
    {UNKNOWN_RATE_SQL} AS unknown_rate,
    {REFUSAL_RATE_SQL} AS refusal_rate,
    {ERROR_RATE_SQL} AS error_rate,
    (tp + fp)::DOUBLE / nullif(n_valid, 0) AS real_answer_rate,
    (fp - fn)::DOUBLE / nullif(n_valid, 0) AS real_answer_bias,
    n_scored, r.auc, r.average_precision, cal.ece, cal.brier,
    o.tpr_at_fpr_01, o.tpr_at_fpr_05, o.eer, o.eer_threshold,
    prompt_tokens, completion_tokens, prompt_tokens + completion_tokens AS total_tokens, cost_usd,
    latency_p50_s, latency_p95_s
FROM counts AS c
LEFT JOIN ranking AS r
    ON (r.dataset, r.model, r.prompt, r.scope) = (c.dataset, c.model, c.prompt, c.scope)
    AND r.grp IS NOT DISTINCT FROM c.grp  -- the whole-dataset row's grp is NULL
LEFT JOIN operating_points AS o
    ON (o.dataset, o.model, o.prompt, o.scope) = (c.dataset, c.model, c.prompt, c.scope)
    AND o.grp IS NOT DISTINCT FROM c.grp
LEFT JOIN calibration AS cal
    ON (cal.dataset, cal.model, cal.prompt, cal.scope) = (c.dataset, c.model, c.prompt, c.scope)
    AND cal.grp IS NOT DISTINCT FROM c.grp
ORDER BY c.dataset, c.model, c.prompt, c.scope = '{DATASET_SCOPE}' DESC, c.grp
"""

# The ROC curve of each model × prompt on each dataset, for charts (the origin left implicit), in
# at most two points for each 1/ROC_CHART_STEPS of the false-positive rate: the lowest and highest
# point there, so a vertical run keeps both ends. With a point for each distinct score, 100k
# scored images drew a 1.3 MB chart, too big to inline in the UI's markdown.
ROC_CHART_STEPS = 250
ROC_POINTS_SQL = f"""
WITH curve AS (
    SELECT dataset, model, prompt,
        sum(pos) OVER down / sum(pos) OVER whole AS tpr, sum(neg) OVER down / sum(neg) OVER whole AS fpr
    FROM (
        SELECT dataset, model, prompt, score,
            count(*) FILTER (WHERE label = 0)::DOUBLE AS pos, count(*) FILTER (WHERE label = 1)::DOUBLE AS neg
        FROM scored WHERE NOT is_error AND score IS NOT NULL GROUP BY ALL
    )
    WINDOW down AS (PARTITION BY dataset, model, prompt ORDER BY score DESC),
        whole AS (PARTITION BY dataset, model, prompt)
), steps AS (
    SELECT dataset, model, prompt, arg_min(fpr, tpr) AS fpr_low, min(tpr) AS tpr_low,
        arg_max(fpr, tpr) AS fpr_high, max(tpr) AS tpr_high
    FROM curve GROUP BY dataset, model, prompt, floor(fpr * {ROC_CHART_STEPS})
)
SELECT dataset, model, prompt, fpr_low AS fpr, tpr_low AS tpr FROM steps
UNION
SELECT dataset, model, prompt, fpr_high, tpr_high FROM steps
"""
# The bins of each model × prompt's reliability diagram on each dataset.
RELIABILITY_SQL = f"""
SELECT dataset, model, prompt, {ECE_BIN_SQL}::INTEGER AS bin, count(*) AS n,
    avg(score) AS mean_score, avg((label = 0)::DOUBLE) AS fake_share
FROM scored WHERE NOT is_error AND score IS NOT NULL
GROUP BY ALL
"""

# Paired outcomes of every two model × prompt pairs on the same images of a dataset (answers only).
# A pair is one distinct content (sha256), however many paths hold it: a model answers each
# content once. Content filed under both labels has no single truth and is left out.
COMPARISON_COUNTS_SQL = """
WITH truth AS (
    SELECT dataset, sha256, any_value(label) AS label
    FROM image_manifest WHERE sha256 IS NOT NULL
    GROUP BY ALL HAVING count(DISTINCT label) = 1
), answers AS (
    SELECT DISTINCT s.dataset, s.model, s.prompt, s.sha256, s.pred = t.label AS correct
    FROM scored AS s
    JOIN truth AS t USING (dataset, sha256)
    SEMI JOIN partition_gate AS g
        ON (g.dataset, g.model, g.prompt) = (s.dataset, s.model, s.prompt) AND g.status = 'passed'
    WHERE s.is_valid
)
SELECT
    a.dataset, a.model AS model_a, a.prompt AS prompt_a, b.model AS model_b, b.prompt AS prompt_b,
    count(*) AS n_images,
    count(*) FILTER (WHERE a.correct AND b.correct) AS both_right,
    count(*) FILTER (WHERE a.correct AND NOT b.correct) AS only_a_right,
    count(*) FILTER (WHERE NOT a.correct AND b.correct) AS only_b_right,
    count(*) FILTER (WHERE NOT a.correct AND NOT b.correct) AS both_wrong
FROM answers AS a
JOIN answers AS b ON a.dataset = b.dataset AND a.sha256 = b.sha256 AND (a.model, a.prompt) < (b.model, b.prompt)
GROUP BY ALL
ORDER BY ALL
"""


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at p = 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    log_half_n = n * math.log(2)
    lg = math.lgamma
    tail = sum(math.exp(lg(n + 1) - lg(i + 1) - lg(n - i + 1) - log_half_n) for i in range(k + 1))
    return min(1.0, 2 * tail)


# The columns of `mllmdf infer` CSVs, seed's first, for the CSV written beside each report.
REPORT_CSV_SQL = """
SELECT path, label, pred, response, verdict, score, error, dataset, subset, sha256 AS image_sha256,
       model, prompt, prompt_hash, latency_s, prompt_tokens, completion_tokens, cost_usd, created_at
FROM scored WHERE model = ? AND prompt = ? ORDER BY dataset, label DESC, path
"""

# Report inputs: the digest changes whenever a row the report shows, or its metrics, change.
REPORT_DIGEST_SQL = """
SELECT count(*) AS n, sum(hash(dataset, subset, path, label, pred, score, response, error, prompt_hash,
                               served_model, verdict_format, cache_generation))::VARCHAR AS h
FROM scored WHERE model = ? AND prompt = ?
"""

# Distinct contents per dataset filed under both labels (left out of paired comparisons).
LABEL_LEAKS_SQL = """
SELECT dataset, count(*)::INTEGER AS n FROM (
    SELECT dataset, sha256 FROM image_manifest WHERE sha256 IS NOT NULL
    GROUP BY ALL HAVING count(DISTINCT label) > 1
) GROUP BY dataset
"""
