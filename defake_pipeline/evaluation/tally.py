"""Running totals of predictions."""

from __future__ import annotations

from dataclasses import dataclass, field

from defake_pipeline.records import Prediction


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
    n_refused: int = 0  # of the unknown: answers the model declined to give (billed all the same)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # label -> [right, answered], for 1 (real) and 0 (fake)
    by_label: dict[int, list[int]] = field(default_factory=lambda: {1: [0, 0], 0: [0, 0]})

    def add(self, p: Prediction) -> None:
        self.n_requests += p.n_requests
        self.prompt_tokens += p.prompt_tokens
        self.completion_tokens += p.completion_tokens
        self.cost_usd += p.cost_usd
        if p.error is None and p.n_requests == 0:
            self.n_cached += 1
        self.count(p.label, p.pred, p.error, p.refused)

    def count(self, label: int, pred: int, error: str | None, refused: bool = False) -> None:
        """One image's outcome: an error or an unknown verdict apart, else right or wrong for its label."""
        self.n_images += 1
        if isinstance(error, str) and error:
            self.n_errors += 1
        elif pred == -1:
            self.n_unknown += 1
            self.n_refused += bool(refused)
        elif label in self.by_label:
            self.by_label[label][0] += pred == label
            self.by_label[label][1] += 1

    @classmethod
    def from_rows(cls, labels, preds, errors, refusals) -> Tally:
        """Totals of rows read back (an output CSV): label and pred 1/0/-1, error text or empty,
        refused or not."""
        tally = cls()
        for label, pred, error, refused in zip(labels, preds, errors, refusals, strict=True):
            tally.count(label, pred, error, refused)
        return tally

    @property
    def outcomes(self) -> str:
        """Errors and unknown verdicts in a few words, with the refusals among the unknown."""
        refused = f" ({self.n_refused} refused)" if self.n_refused else ""
        return f"{self.n_errors} errors, {self.n_unknown} unknown{refused}"

    @staticmethod
    def _share(right: int, total: int) -> float | None:
        return right / total if total else None

    @property
    def n_scored(self) -> int:
        """Images with a verdict that counts: neither an error nor unknown."""
        return sum(c[1] for c in self.by_label.values())

    @property
    def accuracy(self) -> float | None:
        right = sum(c[0] for c in self.by_label.values())
        return self._share(right, sum(c[1] for c in self.by_label.values()))

    def progress(self) -> dict[str, str]:
        """The seed's progress-bar figures: accuracy overall, on reals and on fakes."""

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.2f}%"

        return {
            "all": pct(self.accuracy),
            "reals": pct(self._share(*self.by_label[1])),
            "fakes": pct(self._share(*self.by_label[0])),
        }
