"""Metric functions against hand-computed cases."""

from __future__ import annotations

import pytest

from histo.metrics import QueryResult, average_precision_at_k, majority_vote, precision_at_k, summarise

REL = [True, False, True, False, False]


def test_precision_at_k() -> None:
    assert precision_at_k(REL, 1) == 1.0
    assert precision_at_k(REL, 3) == pytest.approx(2 / 3)
    assert precision_at_k(REL, 5) == pytest.approx(2 / 5)
    assert precision_at_k([True, False], 10) == 0.5  # k larger than the candidates: divide by what came back
    assert precision_at_k([], 5) == 0.0


def test_average_precision_divides_by_relevant_hits_in_top_k() -> None:
    assert average_precision_at_k(REL, 5) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision_at_k([False, False, True], 5) == pytest.approx(1 / 3)
    assert average_precision_at_k([False] * 5, 5) == 0.0
    assert average_precision_at_k([False, True, True], 1) == 0.0


def test_majority_vote_ties_break_by_score_then_rank() -> None:
    assert majority_vote(["a", "b", "a"], [0.9, 0.8, 0.1], 3) == "a"
    assert majority_vote(["a", "b"], [0.5, 0.9], 2) == "b"  # one each: higher summed similarity
    assert majority_vote(["a", "b"], [0.7, 0.7], 2) == "a"  # equal sums: the one ranked first
    assert majority_vote(["a", "b", "b"], [0.9, 0.1, 0.1], 1) == "a"
    assert majority_vote([], [], 5) is None


def test_summarise_macro_averages_classes_and_handles_missing_classes() -> None:
    results = [
        QueryResult("a", ["a", "a", "b"], [0.9, 0.8, 0.7]),
        QueryResult("a", ["a", "b", "b"], [0.9, 0.8, 0.7]),
        QueryResult("a", ["a", "a", "a"], [0.9, 0.8, 0.7]),
        QueryResult("b", ["a", "a", "c"], [0.9, 0.8, 0.7]),  # its class never in the top k
    ]
    summary = summarise(results, [1, 3])
    overall = summary["overall"]
    assert overall["Acc@1"] == pytest.approx(3 / 4)
    # MV@3: class a votes a, b, a -> 2/3 right; class b votes a -> 0; macro = (2/3 + 0) / 2
    assert overall["mMV@3"] == pytest.approx(1 / 3)
    assert summary["per_class"]["b"]["mAP@3"] == 0.0
    assert overall["P@3"] == pytest.approx((2 / 3 + 1 / 3 + 1 + 0) / 4)
    assert summary["confusion"][3]["a"] == {"a": 2, "b": 1}
    assert summary["confusion"][3]["b"] == {"a": 1, "b": 0}
