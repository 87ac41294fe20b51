"""The review rule, checked once: a product needs review when its confidence is under a threshold, given
directly (0 to 1) or picked from the out-of-fold confidences for a target precision (between 0 and 1, both
excluded) - one of them, not both; neither: nothing is flagged. The command line (`--threshold`,
`--min-precision`), the service's settings (`serve.*`, `review.min_precision`) and a request's fields all
build a `ReviewRule`, each naming the two as its user knows them."""
from __future__ import annotations

from dataclasses import dataclass, field

from prodcat.errors import UsageError


@dataclass(frozen=True)
class ReviewRule:
    threshold: float | None = None
    min_precision: float | None = None
    names: tuple[str, str] = field(default=("threshold", "min_precision"), compare=False)  # as the user gave them
    error: type = field(default=UsageError, compare=False)  # what a broken rule raises for this caller

    def __post_init__(self):
        t, p = self.names
        if self.threshold is not None and self.min_precision is not None:
            raise self.error(f"{t} and {p}: give one of them, not both")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise self.error(f"{t}: {self.threshold} must be between 0 and 1")
        if self.min_precision is not None and not 0 < self.min_precision < 1:
            raise self.error(f"{p}: {self.min_precision} must be between 0 and 1, both excluded")

    @property
    def given(self) -> bool:
        """A threshold or a precision was given (a request's own rule then replaces the service's)."""
        return self.threshold is not None or self.min_precision is not None
