"""Metrics, computed in DuckDB SQL over the ``scored`` view (manifest rows joined to predictions).

Conventions, as in the seed: label/pred 1 = real, 0 = fake, -1 = unknown; real is the
positive class for precision and recall; ``accuracy`` excludes unknown verdicts.
``accuracy_strict`` counts each unknown as wrong. Errors (no answer from the endpoint, or
an unreadable image) are never counted as wrong answers: they are excluded from every
accuracy and reported as ``n_error`` and ``error_rate``.
"""

ALL_SUBSETS = "all"
WILSON_Z = 1.959963984540054  # two-sided 95%

SCORED_VIEW_SQL = """
CREATE OR REPLACE VIEW scored AS
SELECT
    m.dataset, m.subset, m.path, m.rel_path, m.label, m.sha256,
    p.model, p.prompt, p.prompt_hash, p.verdict, p.pred, p.score, p.response, p.error,
    p.latency_s, p.prompt_tokens, p.completion_tokens, p.cost_usd, p.created_at,
    p.error IS NOT NULL AS is_error,
    p.error IS NULL AND p.pred = -1 AS is_unknown,
    p.error IS NULL AND p.pred <> -1 AS is_valid
FROM image_manifest AS m
JOIN predictions AS p ON p.image_sha256 = coalesce(m.sha256, 'missing:' || m.path)
"""


def _wilson(successes: str, trials: str, sign: str) -> str:
    z = WILSON_Z
    p = f"({successes})::DOUBLE / nullif({trials}, 0)"
    n = f"nullif({trials}, 0)"
    return (
        f"(({p}) + {z * z}/(2*{n}) {sign} {z}*sqrt(({p})*(1-({p}))/{n} + {z * z}/(4*{n}*{n})))"
        f" / (1 + {z * z}/{n})"
    )


METRICS_SQL = f"""
WITH counts AS (
    SELECT
        dataset, model, prompt,
        CASE WHEN grouping(subset) = 1 THEN '{ALL_SUBSETS}' ELSE subset END AS subset,
        any_value(prompt_hash) AS prompt_hash,
        count(*) AS n_images,
        count(*) FILTER (WHERE label = 1) AS n_real,
        count(*) FILTER (WHERE label = 0) AS n_fake,
        count(*) FILTER (WHERE is_unknown) AS n_unknown,
        count(*) FILTER (WHERE is_error) AS n_error,
        count(*) FILTER (WHERE is_valid) AS n_valid,
        count(*) FILTER (WHERE is_valid AND label = 1 AND pred = 1) AS tp,
        count(*) FILTER (WHERE is_valid AND label = 0 AND pred = 0) AS tn,
        count(*) FILTER (WHERE is_valid AND label = 0 AND pred = 1) AS fp,
        count(*) FILTER (WHERE is_valid AND label = 1 AND pred = 0) AS fn,
        coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
        coalesce(sum(completion_tokens), 0) AS completion_tokens,
        coalesce(sum(cost_usd), 0) AS cost_usd,
        quantile_cont(latency_s, 0.5) FILTER (WHERE NOT is_error) AS latency_p50_s,
        quantile_cont(latency_s, 0.95) FILTER (WHERE NOT is_error) AS latency_p95_s
    FROM scored
    GROUP BY GROUPING SETS ((dataset, model, prompt, subset), (dataset, model, prompt))
)
SELECT
    dataset, model, prompt, subset, prompt_hash,
    n_images, n_real, n_fake, n_unknown, n_error, n_valid, tp, tn, fp, fn,
    (tp + tn)::DOUBLE / nullif(n_valid, 0) AS accuracy,
    {_wilson("tp + tn", "n_valid", "-")} AS accuracy_low,
    {_wilson("tp + tn", "n_valid", "+")} AS accuracy_high,
    (tp + tn)::DOUBLE / nullif(n_images - n_error, 0) AS accuracy_strict,
    tp::DOUBLE / nullif(tp + fp, 0) AS precision,
    tp::DOUBLE / nullif(tp + fn, 0) AS recall,
    2.0 * tp / nullif(2 * tp + fp + fn, 0) AS f1,
    tp::DOUBLE / nullif(tp + fn, 0) AS real_accuracy,
    tn::DOUBLE / nullif(tn + fp, 0) AS fake_accuracy,
    (tp::DOUBLE / nullif(tp + fn, 0) + tn::DOUBLE / nullif(tn + fp, 0)) / 2 AS balanced_accuracy,
    n_unknown::DOUBLE / nullif(n_images - n_error, 0) AS unknown_rate,
    n_error::DOUBLE / nullif(n_images, 0) AS error_rate,
    prompt_tokens, completion_tokens, prompt_tokens + completion_tokens AS total_tokens, cost_usd,
    latency_p50_s, latency_p95_s
FROM counts
ORDER BY dataset, model, prompt, subset = '{ALL_SUBSETS}' DESC, subset
"""
