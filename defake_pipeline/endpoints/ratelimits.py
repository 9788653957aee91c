"""Pacing from the server's own rate-limit headers.

OpenAI answers every request with ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``.
Where they are present, starts are paced just under the announced requests and tokens per
minute, so the 429s a limit would cause never happen; where they are absent (vLLM, most
gateways), nothing is paced here and the AIMD limiter in ``retry.py`` finds the limit.

A request's tokens are what ``tokens.request_tokens`` estimates: what the server's limiter charges.
"""

from __future__ import annotations

import asyncio
import bisect
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
    """A token bucket: refilled at ``per_s``, ``capacity`` deep. The pacer mirrors each limit a
    server announces with one."""

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


@dataclass
class Start:
    """One request's start, as ``RatePacer.wait`` let it go."""

    at: float  # time.monotonic()
    tokens: int
    charged: bool = True  # until the server refuses it: a 429 is charged nothing


class RatePacer:
    """Paces request starts under the limits the server's headers announce.

    Starts go at ``HEADROOM`` of the announced rate: the few percent kept back absorb the
    jitter between when a request leaves here and when the server counts it. A header's
    ``remaining`` was counted when its request arrived, so it leaves out every request that
    started here after that one (the whole opening round, when the first answer announces the
    limits): the local bucket is held to ``remaining``, refilled since, less what those later
    starts are charged. One whose answer has not come back is taken as charged; when a 429
    says it was not, its share goes back into the bucket.
    """

    HEADROOM = 0.97
    KEPT_S = 600.0  # starts are remembered this long: longer than any request may take

    def __init__(self) -> None:
        self.buckets: dict[str, TokenBucket] = {}
        self._lock = asyncio.Lock()
        self._starts: list[Start] = []  # oldest first
        # Per limit: the bucket's level counts the charge of every start after this time (that
        # of the request whose answer last set it), and of none before.
        self._counted_after: dict[str, float] = {}

    @property
    def paces_tokens(self) -> bool:
        return "tokens" in self.buckets

    def observe(self, headers: Mapping[str, str] | None, start: Start | None = None, refused: bool = False) -> None:
        """Learn from one response's headers; ``start`` is what ``wait`` gave its request,
        ``refused`` says the server turned it away (a 429)."""
        if start is not None and refused and start.charged:
            start.charged = False
            for kind, bucket in self.buckets.items():
                if start.at > self._counted_after[kind]:  # its charge is in the level: give it back
                    bucket.level = min(bucket.capacity, bucket.level + _amount(kind, start))
        for kind, limit in parse_limits(headers or {}).items():
            per_s = self.HEADROOM * limit.per_minute / 60
            if kind not in self.buckets or self.buckets[kind].per_s != per_s:
                # One second deep, as hosted APIs enforce a minute over short spans.
                self.buckets[kind] = TokenBucket(per_s, per_s)
                self._counted_after[kind] = time.monotonic()
            bucket = self.buckets[kind]
            bucket.refill()
            if limit.remaining is None:
                continue
            left = self._left_now(kind, limit.remaining, bucket, start)
            if left < bucket.level:
                bucket.level = left
                self._counted_after[kind] = start.at if start else time.monotonic()

    def _left_now(self, kind: str, remaining: int, bucket: TokenBucket, start: Start | None) -> float:
        """What the server has left now, from what it had left when ``start`` arrived."""
        if start is None:
            return remaining
        later = self._starts[bisect.bisect_right(self._starts, start.at, key=lambda s: s.at) :]
        charged = sum(_amount(kind, s) for s in later if s.charged)
        return min(bucket.capacity, remaining + (time.monotonic() - start.at) * bucket.per_s) - charged

    async def wait(self, tokens: int) -> Start:
        """Return when a request of ``tokens`` may start under every announced limit."""
        async with self._lock:  # one waiter at a time: starts leave in order, evenly spaced
            start = Start(time.monotonic(), tokens)
            while self.buckets:
                for bucket in self.buckets.values():
                    bucket.refill()
                wait = max(b.wait_s(_amount(kind, start)) for kind, b in self.buckets.items())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            start.at = time.monotonic()
            for kind, bucket in self.buckets.items():
                bucket.level -= _amount(kind, start)
            self._starts.append(start)
            if self._starts[0].at < start.at - 2 * self.KEPT_S:
                del self._starts[: bisect.bisect_left(self._starts, start.at - self.KEPT_S, key=lambda s: s.at)]
            return start


def _amount(kind: str, start: Start) -> float:
    return 1.0 if kind == "requests" else float(start.tokens)
