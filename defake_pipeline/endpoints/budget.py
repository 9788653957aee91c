"""The spending limit of a run (``--max-cost``)."""

from __future__ import annotations

from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.endpoints.tokens import request_tokens


class BudgetExhausted(RuntimeError):
    """The next request could take spending past --max-cost; it was not sent."""


class CostBudget:
    """Stops new requests once the next one could exceed a spending limit.

    Until a first answer arrives, a request is estimated as the rate limiter counts it
    (``tokens.request_tokens``, the whole output allowance included); after that, from the
    dearest request seen so far. Requests in flight hold their estimate until they settle.
    """

    def __init__(self, limit_usd: float):
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.dearest_usd = 0.0

    def estimate(self, spec: ModelSpec, messages: list[dict]) -> float:
        if self.dearest_usd:
            return self.dearest_usd
        return spec.cost_usd(request_tokens(messages, 0, spec.image_patch_px), spec.max_tokens)

    def reserve(self, estimate: float) -> None:
        if self.spent_usd + self.reserved_usd + estimate > self.limit_usd:
            raise BudgetExhausted(
                f"--max-cost ${self.limit_usd:.4f} reached (spent ${self.spent_usd:.4f}); request not sent"
            )
        self.reserved_usd += estimate

    def settle(self, estimate: float, actual: float) -> None:
        self.reserved_usd -= estimate
        self.spent_usd += actual
        self.dearest_usd = max(self.dearest_usd, actual)
