"""Running totals of predictions."""

from __future__ import annotations

from dataclasses import dataclass, field

from defake_pipeline.core.engine import Prediction


@dataclass
class Tally:
    """Running totals of predictions: the CLI's progress bar and a partition's metadata.

    Accuracies follow the seed: unknown verdicts and errors are left out.
    """

    n_images: int = 0
    n_requests: int = 0
    n_cached: int = 0  # images answered entirely from the journal
    n_errors: int = 0
    n_unknown: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # label -> [right, answered], for 1 (real) and 0 (fake)
    by_label: dict[int, list[int]] = field(default_factory=lambda: {1: [0, 0], 0: [0, 0]})

    def add(self, p: Prediction) -> None:
        self.n_images += 1
        self.n_requests += p.n_requests
        self.prompt_tokens += p.prompt_tokens
        self.completion_tokens += p.completion_tokens
        self.cost_usd += p.cost_usd
        if p.error is not None:
            self.n_errors += 1
            return
        if p.n_requests == 0:
            self.n_cached += 1
        if p.pred == -1:
            self.n_unknown += 1
        elif p.label in self.by_label:
            counts = self.by_label[p.label]
            counts[0] += p.pred == p.label
            counts[1] += 1

    @staticmethod
    def _share(right: int, total: int) -> float | None:
        return right / total if total else None

    @property
    def accuracy(self) -> float | None:
        right = sum(c[0] for c in self.by_label.values())
        return self._share(right, sum(c[1] for c in self.by_label.values()))

    def progress(self) -> dict[str, str]:
        """The seed's progress-bar figures: accuracy overall, on reals and on fakes."""

        def pct(value: float | None) -> str:
            return f"{100 * (value or 0.0):.2f}%"

        return {"all": pct(self.accuracy), "reals": pct(self._share(*self.by_label[1])), "fakes": pct(self._share(*self.by_label[0]))}
