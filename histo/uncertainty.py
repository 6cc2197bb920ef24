"""How sure a retrieval figure is: cluster-bootstrap intervals and paired verdicts (DESIGN.md §5).

Neighbouring tiles of one slide are not independent queries: they share stain, scanner and
patient, and tend to succeed or fail together. So the bootstrap resamples **query groups**
(patient, else slide, else image) with replacement, and every query of a drawn group enters with
the group's draw count as its weight. A micro metric (P@k, mAP@k, Acc@1) is the weighted mean of
its per-query values; a macro metric (mMV@k) is the mean over classes of each class's weighted
mean. The 95 % interval is the 2.5th-97.5th percentile of the resampled figure.

Two encoders scored on the **same queries** are compared by a paired bootstrap: each draw scores
both on the same resampled groups, and the interval of the difference decides the verdict —
``better`` (above 0), ``worse`` (below 0) or ``not distinguishable`` (it holds 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROUNDS = 1000
LEVEL = 0.95
BETTER, WORSE, TIED = "better", "worse", "not distinguishable"


@dataclass(frozen=True)
class PerQuery:
    """One metric's value per query, and whether the figure averages classes first (macro)."""

    values: np.ndarray
    macro: bool = False


@dataclass(frozen=True)
class Interval:
    """A figure and its bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


@dataclass(frozen=True)
class Paired:
    """One encoder against a reference on the same queries: difference, interval, verdict."""

    difference: Interval
    verdict: str

    def as_dict(self) -> dict[str, object]:
        return {**self.difference.as_dict(), "verdict": self.verdict}


def group_weights(groups: Sequence[str] | np.ndarray, rounds: int = ROUNDS, seed: int = 0) -> np.ndarray:
    """``(rounds, queries)`` weights: how often each query's group was drawn in each round."""
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=rounds)
    return draws[:, index].astype(np.float64)


def figure(metric: PerQuery, classes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The metric under each row of ``weights`` (one row of ones gives the plain figure)."""
    values = np.asarray(metric.values, dtype=np.float64)
    if not metric.macro:
        return (weights @ values) / np.maximum(weights.sum(axis=1), 1e-12)
    per_class = []
    for name in np.unique(classes):
        mask = classes == name
        total = weights[:, mask].sum(axis=1)
        mean = (weights[:, mask] @ values[mask]) / np.maximum(total, 1e-12)
        per_class.append(np.where(total > 0, mean, np.nan))
    return np.nanmean(np.vstack(per_class), axis=0)


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples[np.isfinite(samples)], [tail, 100 - tail])
    return float(low), float(high)


def interval(metric: PerQuery, classes: np.ndarray, weights: np.ndarray, level: float = LEVEL) -> Interval:
    """The figure and its bootstrap interval under the resampling ``weights``."""
    plain = float(figure(metric, classes, np.ones((1, len(classes))))[0])
    return Interval(plain, *_bounds(figure(metric, classes, weights), level))


def paired(
    metric: PerQuery, reference: PerQuery, classes: np.ndarray, weights: np.ndarray, level: float = LEVEL
) -> Paired:
    """``metric`` minus ``reference`` (same queries, same resampled groups) and the verdict."""
    ones = np.ones((1, len(classes)))
    plain = float(figure(metric, classes, ones)[0] - figure(reference, classes, ones)[0])
    samples = figure(metric, classes, weights) - figure(reference, classes, weights)
    low, high = _bounds(samples, level)
    verdict = BETTER if low > 0 else WORSE if high < 0 else TIED
    return Paired(Interval(plain, low, high), verdict)


__all__ = ["BETTER", "TIED", "WORSE", "Interval", "Paired", "PerQuery", "group_weights", "interval", "paired"]
