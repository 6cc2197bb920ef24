"""The evaluation report: ``metrics.json``, ``report.md`` and the plots a person would rather see.

Plots: metrics per encoder (bars), the majority-vote confusion matrix of the best encoder, a 2-D
PCA map of each encoder's embeddings coloured by label, and a grid of queries with their top-5
hits framed green (same label) or red; with a feedback round, P@10 before and after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from histo.data.tile_source import TileSource
from histo.errors import HistoError
from histo.evaluation import EncoderResult
from histo.query_evaluation import FeedbackFigures

BAR_METRICS = ("mMV@5", "mAP@5", "P@5", "Acc@1")


def write_slide_report(
    results: dict[str, EncoderResult], dataset: str, out: Path, ks: list[int], synthetic: bool = False
) -> Path:
    """Slide-level metrics: ``metrics.json``, ``report.md``, bars and the best encoder's confusion."""
    out.mkdir(parents=True, exist_ok=True)
    k_main = max(k for k in ks if k <= 5) if min(ks) <= 5 else min(ks)
    best = best_encoder(results, f"mMV@{k_main}")
    chance = 1.0 / max(1, len(results[best].summary["per_class"]))
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "dataset": dataset,
                "level": "slide",
                "chance": chance,
                "best": best,
                "encoders": {n: r.summary for n, r in results.items()},
            },
            indent=2,
        )
    )
    plots = [
        _bars(results, out / "metrics.png", chance),
        _confusion(results[best], best, k_main, out / "confusion.png"),
    ]
    header, rows = comparison_table(results, ks)
    protocol = next(iter(results.values())).summary["protocol"]
    lines = [
        f"# Slide search on {dataset}" + (" (SYNTHETIC data)" if synthetic else ""),
        "",
        f"Leave-one-slide-out over {protocol['queries']} labelled slides "
        f"({protocol['slides']} with a mosaic): "
        "each slide queries with its own mosaic, its own slide and patient excluded, exhaustive search; "
        "slides ranked by the median over query tiles of their best mosaic similarity; MV@k is the majority "
        f"vote of the top k slides' labels. Chance (mMV) {chance:.3f}. Best by mMV@{k_main}: **{best}**.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def best_encoder(results: dict[str, EncoderResult], metric: str) -> str:
    return max(results, key=lambda name: results[name].summary["overall"].get(metric, -1.0))


def write_report(
    results: dict[str, EncoderResult],
    dataset: str,
    out: Path,
    ks: list[int],
    roots: dict[str, Path] | None = None,
    synthetic: bool = False,
) -> Path:
    """Write metrics.json, report.md and the PNG plots into ``out``; returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    k_main = 5 if 5 in ks else max(ks)
    key = f"mMV@{k_main}"
    best = best_encoder(results, key)
    chance = 1.0 / max(1, len(results[best].summary["per_class"]))
    metrics = {name: r.summary for name, r in results.items()}
    (out / "metrics.json").write_text(
        json.dumps({"dataset": dataset, "chance": chance, "best": best, "encoders": metrics}, indent=2)
    )
    plots = [
        _bars(results, out / "metrics.png", chance),
        _confusion(results[best], best, k_main, out / "confusion.png"),
        _embedding_map(results, out / "embedding_map.png"),
    ]
    grid = _query_grid(results[best], best, roots or {}, out / "queries.png")
    if grid is not None:
        plots.append(grid)
    report = out / "report.md"
    report.write_text(_markdown(results, dataset, ks, best, key, chance, plots, synthetic))
    return report


def comparison_table(
    results: dict[str, EncoderResult], ks: list[int], columns: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (all metrics unless ``columns``); best values bold."""
    columns = columns or [f"{m}@{k}" for k in ks for m in ("mMV", "mAP", "P")] + ["Acc@1"]
    values = {name: [r.summary["overall"][c] for c in columns] for name, r in results.items()}
    best = [max(v[i] for v in values.values()) for i in range(len(columns))]
    rows = [
        [name] + [f"**{x:.3f}**" if np.isclose(x, best[i]) else f"{x:.3f}" for i, x in enumerate(vals)]
        for name, vals in values.items()
    ]
    return ["encoder", *columns], rows


def _markdown(
    results: dict[str, EncoderResult],
    dataset: str,
    ks: list[int],
    best: str,
    key: str,
    chance: float,
    plots: list[Path],
    synthetic: bool,
) -> str:
    header, rows = comparison_table(results, ks)
    first = next(iter(results.values())).summary
    lines = [f"# Retrieval on {dataset}", ""]
    if synthetic:
        lines += [
            "**These numbers are on synthetic data: they check the pipeline, not real-data performance.**",
            "",
        ]
    sampled = "a fixed-seed sample of queries" if first["sampled"] else "every labelled tile as a query"
    lines += [
        f"Protocol: leave-one-out over {first['candidates']} tiles with {sampled} "
        f"({first['queries']} queries); "
        "hits from the query's own image and own slide/patient are excluded; exact cosine ranking. "
        "mAP@k divides by the relevant hits within the top k; mMV@k is the class-macro majority vote. "
        f"Chance for mMV is {chance:.3f}. Best by {key}: **{best}**.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"## Per class ({best})",
        "",
    ]
    per_class = results[best].summary["per_class"]
    class_cols = list(next(iter(per_class.values())))
    lines += ["| class | " + " | ".join(class_cols) + " |", "|" + "---|" * (len(class_cols) + 1)]
    lines += [
        f"| {c} | " + " | ".join(f"{v[m]:.3f}" for m in class_cols) + " |" for c, v in per_class.items()
    ]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _bars(results: dict[str, EncoderResult], path: Path, chance: float) -> Path:
    names = list(results)
    metrics = [m for m in BAR_METRICS if m in next(iter(results.values())).summary["overall"]]
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4))
    for i, metric in enumerate(metrics):
        values = [results[n].summary["overall"][metric] for n in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=metric)
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance (mMV)")
    ax.set_xticks(np.arange(len(names)) + width * (len(metrics) - 1) / 2, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(ncol=len(metrics) + 1, fontsize=8, loc="upper right")
    ax.set_title("Retrieval metrics per encoder")
    return _save(fig, path)


def _confusion(result: EncoderResult, name: str, k: int, path: Path) -> Path:
    counts = result.summary["confusion"][k]
    classes = list(counts)
    matrix = np.array([[counts[t][p] for p in classes] for t in classes], dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(rows):
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if value > 0.5 else "black",
        )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel(f"majority vote of top {k}")
    ax.set_ylabel("query label")
    ax.set_title(f"{name}: MV@{k} confusion (rows sum to 1)")
    return _save(fig, path)


def _pca(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _embedding_map(results: dict[str, EncoderResult], path: Path) -> Path:
    names = [n for n, r in results.items() if r.tiles is not None]
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    labels = sorted(set(next(iter(results.values())).tiles.labels.tolist()))  # type: ignore[union-attr]
    colours = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, names, strict=False):
        tiles = results[name].tiles
        assert tiles is not None
        points = _pca(tiles.vectors)
        for i, label in enumerate(labels):
            mask = tiles.labels == label
            ax.scatter(points[mask, 0], points[mask, 1], s=6, color=colours(i % 10), label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle("PCA of embeddings, coloured by label")
    return _save(fig, path)


def _thumbnail(tiles: TileSource, payload: dict[str, Any], size: int = 96) -> np.ndarray | None:
    try:
        return np.asarray(tiles.tile_pixels(payload, size))
    except (HistoError, OSError):
        return None  # a missing picture leaves its cell empty; the labels still tell the story


def _query_grid(result: EncoderResult, name: str, roots: dict[str, Path], path: Path) -> Path | None:
    tiles = result.tiles
    if tiles is None or not result.examples or not roots:
        return None
    source = TileSource(roots)
    fig, axes = plt.subplots(len(result.examples), 6, figsize=(9, 1.6 * len(result.examples)), squeeze=False)
    for row, example in zip(axes, result.examples, strict=True):
        query_label = tiles.payloads[example["query"]].get("label")
        cells = [example["query"], *example["hits"]]
        for col, (ax, index) in enumerate(zip(row, cells, strict=False)):
            payload = tiles.payloads[index]
            pixels = _thumbnail(source, payload)
            if pixels is not None:
                ax.imshow(pixels)
            colour = "black" if col == 0 else ("green" if payload.get("label") == query_label else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4 if col else 2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(("query: " if col == 0 else "") + str(payload.get("label")), fontsize=7)
        for ax in row[len(cells) :]:
            ax.axis("off")
    fig.suptitle(f"{name}: queries and their top-5 hits (green: same label)")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_feedback(rounds: list[FeedbackFigures], dataset: str, out: Path) -> Path:
    """``feedback.json`` and ``feedback.png``: per encoder, P@10 of the first page, of the next
    page without feedback, and after one feedback round with each strategy."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "feedback.json").write_text(json.dumps([r.as_dict() for r in rounds], indent=2) + "\n")
    encoders = list(dict.fromkeys(r.encoder for r in rounds))
    strategies = list(dict.fromkeys(r.strategy for r in rounds))
    by = {(r.encoder, r.strategy): r for r in rounds}
    series = [("first page", [by[e, strategies[0]].first for e in encoders])]
    series.append(("next page, no feedback", [by[e, strategies[0]].next_page for e in encoders]))
    series += [(f"after feedback: {s}", [by[e, s].after for e in encoders]) for s in strategies]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(encoders) + 2), 4))
    for i, (name, values) in enumerate(series):
        ax.bar(np.arange(len(encoders)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(encoders)) + width * (len(series) - 1) / 2, encoders, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("P@10")
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.set_title(f"{dataset}: one simulated feedback round (top 10 judged by label)")
    return _save(fig, out / "feedback.png")
