"""Pacing from the server's own rate-limit headers.

OpenAI answers every request with ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``.
Where they are present, starts are paced just under the announced requests and tokens per
minute, so the 429s a limit would cause never happen; where they are absent (vLLM, most
gateways), nothing is paced here and the AIMD limiter in ``retry.py`` finds the limit.

A request's tokens are what ``tokens.request_tokens`` estimates: what the server's limiter charges.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str | None) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "20ms", "1h2m3.5s", or bare seconds) in seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        value = float(text)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


@dataclass(frozen=True)
class Limit:
    """One limit as the headers announce it: per minute, what is left, and when it is full again."""

    per_minute: int
    remaining: int | None
    reset_s: float | None


def _int(value: str | None) -> int | None:
    try:
        number = int(float(value)) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def parse_limits(headers: Mapping[str, str]) -> dict[str, Limit]:
    """The announced limits ("requests", "tokens") found in ``headers``; {} when there are none."""
    found = {}
    for kind in ("requests", "tokens"):
        per_minute = _int(headers.get(f"x-ratelimit-limit-{kind}"))
        if per_minute:
            found[kind] = Limit(
                per_minute,
                _int(headers.get(f"x-ratelimit-remaining-{kind}")),
                parse_duration_s(headers.get(f"x-ratelimit-reset-{kind}")),
            )
    return found


class TokenBucket:
    """A token bucket: refilled at ``per_s``, ``capacity`` deep. The pacer mirrors a server's
    limit with one; the project's test server enforces its limits with the same class."""

    def __init__(self, per_s: float, capacity: float, level: float | None = None):
        self.per_s = per_s
        self.capacity = capacity
        self.level = capacity if level is None else min(capacity, level)
        self.stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.per_s)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (0: now). One dearer than the whole bucket goes
        once the bucket is full, and leaves a debt."""
        need = min(amount, self.capacity) - self.level
        return max(0.0, need / self.per_s)

    def reserve(self, amount: float) -> float:
        """Take ``amount`` whatever the level; seconds until it is paid for."""
        self.refill()
        self.level -= amount
        return max(0.0, -self.level / self.per_s)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.per_s)


class RatePacer:
    """Paces request starts under the limits the server's headers announce.

    Starts go at ``HEADROOM`` of the announced rate: the few percent kept back absorb the
    jitter between when a request leaves here and when the server counts it. A response that
    says a limit is spent empties the local bucket too, whatever this side believed.
    """

    HEADROOM = 0.97

    def __init__(self) -> None:
        self.buckets: dict[str, TokenBucket] = {}
        self._lock = asyncio.Lock()

    @property
    def paces_tokens(self) -> bool:
        return "tokens" in self.buckets

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Learn from one response's headers (a 429's included)."""
        if not headers:
            return
        for kind, limit in parse_limits(headers).items():
            per_s = self.HEADROOM * limit.per_minute / 60
            bucket = self.buckets.get(kind)
            if bucket is None or bucket.per_s != per_s:
                start = limit.remaining if limit.remaining is not None else per_s
                # One second deep, as hosted APIs enforce a minute over short spans.
                bucket = self.buckets[kind] = TokenBucket(per_s, per_s, start)
            bucket.refill()
            if limit.remaining == 0:
                bucket.level = min(bucket.level, 0.0)

    async def wait(self, tokens: int) -> None:
        """Return when a request of ``tokens`` may start under every announced limit."""
        if not self.buckets:
            return
        async with self._lock:  # one waiter at a time: starts leave in order, evenly spaced
            while True:
                amounts = {"requests": 1.0, "tokens": float(tokens)}
                for bucket in self.buckets.values():
                    bucket.refill()
                wait = max(b.wait_s(amounts[kind]) for kind, b in self.buckets.items())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            for kind, bucket in self.buckets.items():
                bucket.level -= amounts[kind]
