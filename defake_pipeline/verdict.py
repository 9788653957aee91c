"""Verdict parsing, exactly as the seed does it: the last keyword in the response wins."""

from __future__ import annotations

import math

from defake_pipeline.records import Verdict

# " natural" keeps its leading space, as in the seed, so "unnatural" does not count as real.
_REAL_MARKERS = ("real", " natural", "真实的")
_FAKE_MARKERS = ("fake", "generated", "生成的")


def parse_verdict(response: str | None) -> Verdict:
    """``real``, ``fake`` or ``unknown`` from a model's final response text."""
    if not response:
        return "unknown"
    text = response.lower().strip()
    last_real = max(text.rfind(m) for m in _REAL_MARKERS)
    last_fake = max(text.rfind(m) for m in _FAKE_MARKERS)
    if last_real == -1 and last_fake == -1:
        return "unknown"
    return "real" if last_real > last_fake else "fake"


def _marker_class(token: object) -> str | None:
    """'real' or 'fake' when a (possibly partial) token starts one of the verdict words."""
    if not isinstance(token, str):
        return None
    t = token.strip().lower().strip(".,:;!\"'*")
    if len(t) < 2:
        return None
    for cls, markers in (("real", ("real", "natural", "真实")), ("fake", ("fake", "generated", "生成"))):
        if any(m.startswith(t) or t.startswith(m) for m in markers):
            return cls
    return None


def score_from_logprobs(tokens: list) -> float | None:
    """P(fake) at the last verdict token, from its top alternatives' probabilities.

    ``tokens`` is the chat-completions ``logprobs.content`` list as sent: dicts with
    ``token``, ``logprob`` and ``top_logprobs``. Entries of another shape are passed over.
    None when no verdict token is found.
    """
    for item in reversed(tokens):
        if not isinstance(item, dict) or _marker_class(item.get("token")) is None:
            continue
        mass = {"real": 0.0, "fake": 0.0}
        alternatives = item.get("top_logprobs")
        for alt in alternatives if isinstance(alternatives, list) and alternatives else [item]:
            cls = _marker_class(alt.get("token")) if isinstance(alt, dict) else None
            logprob = alt.get("logprob") if cls else None
            if cls and isinstance(logprob, int | float) and math.isfinite(logprob):
                mass[cls] += math.exp(min(logprob, 0.0))
        total = mass["real"] + mass["fake"]
        return mass["fake"] / total if total > 0 else None
    return None
