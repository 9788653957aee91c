"""The spending limit of a run (``--max-cost``)."""

from __future__ import annotations

from defake_pipeline.endpoints.registry import ModelSpec


class BudgetExhausted(RuntimeError):
    """The next request could take spending past --max-cost; it was not sent."""


class CostBudget:
    """Stops new requests once the next one could exceed a spending limit.

    Until a first answer arrives, a request is estimated from its size (text at 4 characters
    a token, 1000 tokens an image, and the full output allowance); after that, from the
    dearest request seen so far. Requests in flight hold their estimate until they settle.
    """

    IMAGE_TOKENS = 1000

    def __init__(self, limit_usd: float):
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.dearest_usd = 0.0

    def estimate(self, spec: ModelSpec, messages: list[dict]) -> float:
        if self.dearest_usd:
            return self.dearest_usd
        chars, images = 0, 0
        for msg in messages:
            parts = msg["content"] if isinstance(msg["content"], list) else [{"type": "text", "text": msg["content"]}]
            for part in parts:
                if part["type"] == "text":
                    chars += len(part["text"])
                else:
                    images += 1
        return spec.cost_usd(chars // 4 + images * self.IMAGE_TOKENS, spec.max_tokens)

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
