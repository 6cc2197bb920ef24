"""Bootstrap intervals and paired verdicts, checked against cases small enough to work by hand."""

from __future__ import annotations

import numpy as np
import pytest

from histo.uncertainty import BETTER, TIED, WORSE, PerQuery, figure, group_weights, interval, paired


def test_resampling_draws_slides_not_tiles() -> None:
    """Slide A holds two hits, slide B one miss. Drawing two slides with replacement gives AA
    (2/2 = 1), AB or BA (2/3) and BB (0) with chances 1/4, 1/2, 1/4. Drawing tiles would also give
    1/3 (one hit of three), which must never appear."""
    weights = group_weights(["A", "A", "B"], rounds=8000, seed=0)
    values = figure(PerQuery(np.array([1.0, 1.0, 0.0])), np.array(["x"] * 3), weights)
    found, counts = np.unique(np.round(values, 6), return_counts=True)
    assert found.tolist() == [0.0, round(2 / 3, 6), 1.0]
    assert counts / 8000 == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert set(np.unique(weights.sum(axis=1))) == {3.0, 4.0, 2.0}  # 2 slides drawn; their tile counts
    result = interval(PerQuery(np.array([1.0, 1.0, 0.0])), np.array(["x"] * 3), weights)
    assert (result.value, result.low, result.high) == pytest.approx((2 / 3, 0.0, 1.0))


def test_a_macro_figure_averages_classes_first() -> None:
    """Class x: 3 queries, all right; class y: 1 query, wrong. Micro 3/4, macro (1 + 0) / 2."""
    values = np.array([1.0, 1.0, 1.0, 0.0])
    classes = np.array(["x", "x", "x", "y"])
    ones = np.ones((1, 4))
    assert figure(PerQuery(values), classes, ones)[0] == pytest.approx(0.75)
    assert figure(PerQuery(values, macro=True), classes, ones)[0] == pytest.approx(0.5)
    # a draw that leaves class y out averages over class x alone
    assert figure(PerQuery(values, macro=True), classes, np.array([[1.0, 1.0, 1.0, 0.0]]))[0] == 1.0


def test_paired_verdicts() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(30)], 4)
    classes = np.array(["x", "y"] * 60)
    weights = group_weights(groups, rounds=2000, seed=1)
    weak = PerQuery((rng.random(120) < 0.4).astype(float))
    strong = PerQuery(np.maximum(weak.values, (rng.random(120) < 0.6).astype(float)))
    assert paired(strong, weak, classes, weights).verdict == BETTER
    assert paired(weak, strong, classes, weights).verdict == WORSE
    same = paired(weak, weak, classes, weights)
    assert same.verdict == TIED and same.difference.value == 0.0
    # one query's difference on 120 is within the noise
    nudged = PerQuery(weak.values.copy())
    nudged.values[np.flatnonzero(weak.values == 0)[0]] = 1.0
    assert paired(nudged, weak, classes, weights).verdict == TIED
