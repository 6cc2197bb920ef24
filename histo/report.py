"""The evaluation report: ``metrics.json``, ``report.md`` and the plots a person would rather see.

Plots: metrics per encoder (bars), the majority-vote confusion matrix of the best encoder, a 2-D
PCA map of each encoder's embeddings coloured by label, and a grid of queries with their top-5
hits framed green (same label) or red; with a feedback round, P@10 before and after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from histo.comparison import CONDITION_COLUMNS, Conditions, Verdicts, compare, mismatch
from histo.data.tile_source import TileSource
from histo.errors import HistoError
from histo.evaluation import EncoderResult
from histo.query_evaluation import FeedbackFigures

BAR_METRICS = ("mMV@5", "mAP@5", "P@5", "Acc@1")
#: Below this many resampling units (patients, slides or images) the report warns about its intervals.
FEW_UNITS = 10
#: Every file a report writes: a rerun into the same folder removes them first, so no plot of an
#: earlier run (a query grid it drew, a feedback plot) is left beside the new figures.
REPORT_FILES = (
    "metrics.json",
    "report.md",
    "metrics.png",
    "confusion.png",
    "embedding_map.png",
    "queries.png",
    "feedback.json",
    "feedback.png",
)


def prepare_folder(out: Path) -> Path:
    """``out`` created, with the files of an earlier report in it removed."""
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    return out


def main_k(ks: list[int]) -> int:
    """The cut-off the verdicts use: 5 where asked for (the field's habit), else the largest <= 5."""
    return 5 if 5 in ks else max([k for k in ks if k <= 5] or [min(ks)])


@dataclass
class Comparison:
    """Everything a report or the CLI says about a set of rows: conditions, intervals, verdicts."""

    results: dict[str, EncoderResult]
    ks: list[int]
    conditions: dict[str, Conditions]
    verdicts: Verdicts

    @property
    def key(self) -> str:
        return f"mMV@{main_k(self.ks)}"

    @property
    def judged(self) -> list[str]:
        """The metrics with a verdict column: mMV@k and mAP@k at the main cut-off."""
        return [self.key, f"mAP@{main_k(self.ks)}"]

    @property
    def compared(self) -> list[str]:
        return [n for n, r in self.results.items() if not r.partial]

    @property
    def partial(self) -> list[str]:
        return [n for n, r in self.results.items() if r.partial]

    def figures_table(self, columns: list[str], names: list[str]) -> tuple[list[str], list[list[str]]]:
        """Header and rows: each figure with its 95 % interval, then the verdict columns."""
        ref = self.verdicts.reference
        header = ["encoder", *columns, *(f"vs {ref} ({m})" for m in self.judged)]
        rows = []
        for name in names:
            cells = [str(self.verdicts.intervals[name][c]) for c in columns]
            rows.append([name, *cells, *(self.verdicts.verdict(name, m) for m in self.judged)])
        return header, rows

    def summary_line(self) -> str:
        """Who is better or worse than the reference, in words (never "best" by a raw number)."""
        ref, key = self.verdicts.reference, self.key
        kind = (
            "the best baseline"
            if self.verdicts.reference_is_baseline
            else "the highest row: no baseline was compared"
        )
        groups: dict[str, list[str]] = {}
        for name in self.compared:
            if name != ref:
                groups.setdefault(self.verdicts.verdict(name, key), []).append(name)
        if not groups:
            return f"Only {ref} was compared; nothing to judge it against."
        said = "; ".join(f"{verdict}: {', '.join(names)}" for verdict, names in groups.items())
        return f"By {key} against {ref} ({kind}), paired bootstrap over the same queries — {said}."


def build_comparison(
    results: dict[str, EncoderResult],
    ks: list[int],
    conditions: dict[str, Conditions] | None = None,
    seed: int = 0,
) -> Comparison:
    """Intervals for every metric of ``ks`` and verdicts at the main cut-off."""
    metrics = [f"{m}@{k}" for k in ks for m in ("mMV", "mAP", "P")] + ["Acc@1"]
    conditions = conditions or {name: Conditions() for name in results}
    verdicts = compare(results, metrics, f"mMV@{main_k(ks)}", conditions, seed=seed)
    return Comparison(results, ks, conditions, verdicts)


def write_slide_report(comparison: Comparison, dataset: str, out: Path, synthetic: bool = False) -> Path:
    """Slide-level metrics: ``metrics.json``, ``report.md``, bars and the best encoder's confusion."""
    prepare_folder(out)
    results, key = comparison.results, comparison.key
    best = best_encoder(results, key)
    chance = 1.0 / max(1, len(results[best].summary["per_class"]))
    _write_json(out, comparison, {"dataset": dataset, "level": "slide", "chance": chance, "best": best})
    plots = [
        _bars(comparison, out / "metrics.png", chance),
        _confusion(results[best], best, main_k(comparison.ks), out / "confusion.png"),
    ]
    protocol = next(iter(results.values())).summary["protocol"]
    lines = [f"# Slide search on {dataset}", "", *_banner(synthetic)]
    lines += [
        f"Leave-one-slide-out over {protocol['queries']} labelled slides "
        f"({protocol['slides']} with a mosaic): "
        "each slide queries with its own mosaic, its own slide and patient excluded, exhaustive search; "
        "slides ranked by the median over query tiles of their best mosaic similarity; MV@k is the majority "
        f"vote of the top k slides' labels. Chance (mMV) {chance:.3f}. Intervals: 95 % bootstrap over "
        "query patients (else slides).",
        "",
        *_sections(comparison),
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def best_encoder(results: dict[str, EncoderResult], metric: str) -> str:
    """The compared row with the highest ``metric`` (for the plots that show one row, and the
    demo's example query; the report's verdicts are what say which rows differ)."""
    pool = [n for n, r in results.items() if not r.partial] or list(results)
    return max(pool, key=lambda name: results[name].summary["overall"].get(metric, -1.0))


def write_report(
    comparison: Comparison,
    dataset: str,
    out: Path,
    roots: dict[str, Path] | None = None,
    synthetic: bool = False,
    scope: str = "",
) -> Path:
    """Write metrics.json, report.md and the PNG plots into ``out``; returns report.md."""
    prepare_folder(out)
    results = comparison.results
    best = best_encoder(results, comparison.key)
    chance = 1.0 / max(1, len(results[best].summary["per_class"]))
    _write_json(out, comparison, {"dataset": dataset, "scope": scope, "chance": chance, "best": best})
    plots = [
        _bars(comparison, out / "metrics.png", chance),
        _confusion(results[best], best, main_k(comparison.ks), out / "confusion.png"),
        _embedding_map(results, out / "embedding_map.png"),
    ]
    grid = _query_grid(results[best], best, roots or {}, out / "queries.png")
    if grid is not None:
        plots.append(grid)
    report = out / "report.md"
    report.write_text(_markdown(comparison, dataset, best, chance, plots, synthetic, scope))
    return report


def _write_json(out: Path, comparison: Comparison, head: dict[str, Any]) -> None:
    body = {
        **head,
        "reference": comparison.verdicts.reference,
        "conditions": {n: c.as_dict() for n, c in comparison.conditions.items()},
        "plan": {n: r.plan.as_dict() for n, r in comparison.results.items() if r.plan},
        "partial": comparison.partial,
        "uncertainty": comparison.verdicts.as_dict(),
        "encoders": {n: r.summary for n, r in comparison.results.items()},
    }
    (out / "metrics.json").write_text(json.dumps(body, indent=2) + "\n")


def _banner(synthetic: bool) -> list[str]:
    if not synthetic:
        return []
    return [
        "**These numbers are on synthetic data: they check the pipeline, not real-data performance.**",
        "",
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _sections(comparison: Comparison) -> list[str]:
    """Conditions, figures with intervals and verdicts, and the rows scored on other queries."""
    columns = [f"{m}@{k}" for k in comparison.ks for m in ("mMV", "mAP", "P")] + ["Acc@1"]
    lines = ["## Conditions", ""]
    lines += _table(CONDITION_COLUMNS, [[n, *c.cells()] for n, c in comparison.conditions.items()])
    warning = mismatch(comparison.conditions)
    lines += ["", f"**{warning}**" if warning else "Every row saw the same input conditions.", ""]
    lines += ["## Figures (95 % intervals)", "", comparison.summary_line(), ""]
    lines += _table(*comparison.figures_table(columns, comparison.compared))
    lines += [""]
    if comparison.partial:
        lines += [
            "## Scored on other queries",
            "",
            "These encoders lack vectors for some of the tiles, so they were scored on their own "
            "tiles and cannot be compared with the rows above; ingest the data set with them to "
            "compare.",
            "",
        ]
        rows = [
            [
                n,
                str(comparison.results[n].summary["queries"]),
                str(comparison.verdicts.intervals[n][comparison.key]),
            ]
            for n in comparison.partial
        ]
        lines += [*_table(["encoder", "queries", comparison.key], rows), ""]
    return lines


def comparison_rows(comparison: Comparison, columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """The CLI's table: compared rows, then partial rows marked as such."""
    header, rows = comparison.figures_table(columns, comparison.compared)
    for name in comparison.partial:
        cells = [str(comparison.verdicts.intervals[name][c]) for c in columns]
        rows.append([f"{name} (other queries)", *cells, *(["not compared"] * len(comparison.judged))])
    return header, rows


def _markdown(
    comparison: Comparison,
    dataset: str,
    best: str,
    chance: float,
    plots: list[Path],
    synthetic: bool,
    scope: str,
) -> str:
    first = comparison.results[comparison.compared[0] if comparison.compared else best]
    plan = first.plan
    assert plan is not None
    sampled = "a fixed-seed sample of queries" if plan.sampled else "every labelled tile as a query"
    where = f"{dataset} ({scope})" if scope else dataset
    lines = [f"# Retrieval on {where}", "", *_banner(synthetic)]
    lines += [
        f"Protocol: leave-one-out over {plan.candidates} tiles with {sampled} "
        f"({len(plan.ids)} queries from {len(set(plan.units.tolist()))} patients/slides/images, the same "
        "queries for every row of the figures table); hits from the query's own image and own "
        "slide/patient are excluded; exact cosine ranking. mAP@k divides by the relevant hits within the "
        "top k; mMV@k is the class-macro majority vote. Intervals: 95 % bootstrap resampling query "
        "patients (else slides, else images), not tiles; verdicts: paired bootstrap of the difference "
        f"on the same queries. Chance for mMV is {chance:.3f}.",
        "",
    ]
    units = len(set(plan.units.tolist()))
    if units < FEW_UNITS:
        lines += [
            f"**The queries come from {units} patients/slides/images only: intervals resampled from so few "
            "are rough, and a verdict needs a large difference.**",
            "",
        ]
    if plan.left_out:
        named = ", ".join(f"{c} ({n} tiles)" for c, n in plan.left_out.items())
        lines += [
            f"**Left out as queries: {named}** — each lies in a single image, slide or patient, so none of "
            "its tiles can be found once the query's own are excluded; they stay candidates, and the "
            "macro averages are over the other classes.",
            "",
        ]
    lines += _sections(comparison)
    per_class = comparison.results[best].summary["per_class"]
    class_cols = list(next(iter(per_class.values())))
    lines += [f"## Per class ({best})", ""]
    lines += _table(
        ["class", *class_cols], [[c, *(f"{v[m]:.3f}" for m in class_cols)] for c, v in per_class.items()]
    )
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _bars(comparison: Comparison, path: Path, chance: float) -> Path:
    """Metrics per row, with their 95 % intervals as error bars."""
    results = comparison.results
    names = list(results)
    metrics = [m for m in BAR_METRICS if m in comparison.verdicts.metrics]
    width = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4.4))
    for i, metric in enumerate(metrics):
        found = [comparison.verdicts.intervals[n][metric] for n in names]
        values = np.array([f.value for f in found])
        spread = np.array([[f.value - f.low for f in found], [f.high - f.value for f in found]])
        ax.bar(np.arange(len(names)) + i * width, values, width, yerr=spread, capsize=2, label=metric)
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance (mMV)")
    shown = [f"{n}\n(other queries)" if results[n].partial else n for n in names]
    ax.set_xticks(np.arange(len(names)) + width * (len(metrics) - 1) / 2, shown, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (bars: 95 % interval)")
    ax.legend(ncol=len(metrics) + 1, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
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
    ax.set_title(f"{name}:\nMV@{k} confusion (rows sum to 1)", fontsize=9)
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


def _thumbnail(sources: list[TileSource], payload: dict[str, Any], size: int = 96) -> np.ndarray | None:
    """The tile read from the folder recorded at ingestion, else from the ``--data`` folder."""
    for source in sources:
        try:
            return np.asarray(source.tile_pixels(payload, size))
        except (HistoError, OSError):
            continue
    return None


def _query_grid(result: EncoderResult, name: str, roots: dict[str, Path], path: Path) -> Path | None:
    tiles = result.tiles
    if tiles is None or not result.examples:
        return None
    sources = [TileSource(), *([TileSource(roots)] if roots else [])]
    fig, axes = plt.subplots(len(result.examples), 6, figsize=(9, 1.6 * len(result.examples)), squeeze=False)
    for row, example in zip(axes, result.examples, strict=True):
        query_label = tiles.payloads[example["query"]].get("label")
        cells = [example["query"], *example["hits"]]
        for col, (ax, index) in enumerate(zip(row, cells, strict=False)):
            payload = tiles.payloads[index]
            pixels = _thumbnail(sources, payload)
            if pixels is not None:
                ax.imshow(pixels)
            else:
                ax.text(0.5, 0.5, "image\nnot found", ha="center", va="center", fontsize=7, color="grey")
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
