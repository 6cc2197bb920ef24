"""Retrieval metrics with one fixed definition (DESIGN.md §5), on ranked label lists.

Published retrieval numbers disagree because definitions differ; histo's are:

- ``P@k``: relevant hits in the top k divided by the number of hits returned (k, or fewer when
  fewer candidates exist).
- ``AP@k``: the mean of P@i over the ranks i <= k that hold a relevant hit — the denominator is
  the number of relevant hits within the top k (SISH's mAP@5 divides by 5 instead); 0 when the
  top k holds none. ``mAP@k`` averages AP@k over queries.
- ``MV@k``: the majority label of the top k is the query's label; ties go to the label with the
  higher summed similarity, then to the one ranked first. ``mMV@k`` is the mean over classes of
  each class's MV@k accuracy (macro), so a frequent class cannot carry the score.
- ``Acc@1``: the top hit's label is the query's label (micro, over all queries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from histo.uncertainty import PerQuery


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    """Relevant hits among the first ``k`` returned, over the number returned."""
    top = list(relevant)[:k]
    return sum(top) / len(top) if top else 0.0


def average_precision_at_k(relevant: Sequence[bool], k: int) -> float:
    """Mean precision at the ranks of relevant hits within the top k (0 when there are none)."""
    hits, total = 0, 0.0
    for rank, is_relevant in enumerate(list(relevant)[:k], start=1):
        if is_relevant:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def majority_vote(labels: Sequence[str], scores: Sequence[float], k: int) -> str | None:
    """The most frequent label of the top k; ties by summed score, then by first rank."""
    top = list(zip(labels, scores, strict=True))[:k]
    if not top:
        return None
    tally: dict[str, list[float]] = {}
    for rank, (label, score) in enumerate(top):
        entry = tally.setdefault(label, [0, 0.0, -rank])
        entry[0] += 1
        entry[1] += score
    return max(tally, key=lambda label: tuple(tally[label]))


@dataclass
class QueryResult:
    """One query's label and its ranked hits (labels and similarities), exclusions already applied."""

    label: str
    hit_labels: list[str]
    hit_scores: list[float]


def per_query(results: Sequence[QueryResult], ks: Sequence[int]) -> dict[str, PerQuery]:
    """Every overall metric as its per-query values (``histo.uncertainty`` resamples them):
    P@k, AP@k and top-1 are averaged over queries, MV@k over classes first (macro)."""
    values: dict[str, PerQuery] = {}
    for k in ks:
        relevant = [[hit == r.label for hit in r.hit_labels] for r in results]
        values[f"P@{k}"] = PerQuery(np.array([precision_at_k(rel, k) for rel in relevant]))
        values[f"mAP@{k}"] = PerQuery(np.array([average_precision_at_k(rel, k) for rel in relevant]))
        votes = [majority_vote(r.hit_labels, r.hit_scores, k) for r in results]
        hits = [vote == r.label for vote, r in zip(votes, results, strict=True)]
        values[f"mMV@{k}"] = PerQuery(np.array(hits, dtype=float), macro=True)
    top1 = [bool(r.hit_labels) and r.hit_labels[0] == r.label for r in results]
    values["Acc@1"] = PerQuery(np.array(top1, dtype=float))
    return values


def summarise(results: Sequence[QueryResult], ks: Sequence[int]) -> dict[str, object]:
    """Overall and per-class metrics for every k, plus the MV@k confusion counts."""
    classes = sorted({r.label for r in results})
    labels = np.array([r.label for r in results])
    values = per_query(results, ks)
    overall: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {c: {} for c in classes}
    confusion: dict[int, dict[str, dict[str, int]]] = {}
    for k in ks:
        p, ap, mv = (values[f"{m}@{k}"].values for m in ("P", "mAP", "mMV"))
        class_mv = {c: float(mv[labels == c].mean()) for c in classes}
        overall.update(
            {
                f"P@{k}": float(p.mean()) if len(p) else 0.0,
                f"mAP@{k}": float(ap.mean()) if len(ap) else 0.0,
                f"mMV@{k}": float(np.mean(list(class_mv.values()))) if class_mv else 0.0,
            }
        )
        for c in classes:
            mask = labels == c
            per_class[c].update(
                {f"P@{k}": float(p[mask].mean()), f"mAP@{k}": float(ap[mask].mean()), f"MV@{k}": class_mv[c]}
            )
        confusion[k] = {c: {d: 0 for d in classes} for c in classes}
        for r in results:
            vote = majority_vote(r.hit_labels, r.hit_scores, k)
            if vote in confusion[k][r.label]:
                confusion[k][r.label][vote] += 1
    top1 = values["Acc@1"].values
    overall["Acc@1"] = float(top1.mean()) if len(top1) else 0.0
    return {"overall": overall, "per_class": per_class, "confusion": confusion, "queries": len(results)}
