"""The main job, end to end on the embedded default: data → train → ingest → evaluate → search.

Synthetic BACH-like and BRACS-like sets (in their real layouts), eight synthetic whole-slide images
(pyramidal TIFF, two per BACH-like class) and the shipped real samples;
the four SSL methods trained briefly on the BACH-like set within a time budget; every tile
ingested with every encoder and baseline; leave-one-out evaluation with a report; one example
query, one slide search and its heatmap. Numbers are synthetic: they show the pipeline works,
not real-data performance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histo.comparison import row_conditions
from histo.data.datasets import scan_dataset
from histo.data.samples import sample_dir
from histo.data.synth import write_synthetic
from histo.data.synth_slides import write_synthetic_slides
from histo.data.tile_source import TileSource
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders import DEFAULT_INPUT_SIZE
from histo.encoders.artifact import load_meta
from histo.encoders.catalog import resolve_encoders
from histo.encoders.registry import names
from histo.evaluation import evaluate
from histo.heatmap import render_heatmap, tile_similarities
from histo.ingest import Ingestor, ingest
from histo.report import Comparison, best_encoder, build_comparison, write_report
from histo.slide_search import rank_slides, slide_ids_of, slide_mosaic
from histo.store.base import SearchFilter, VectorStore
from histo.training import TrainConfig, train


@dataclass
class DemoConfig:
    """Sizes and budget of the demo; the defaults fit about ten minutes on a 2-core CPU."""

    home: Path
    minutes: float = 10.0
    train_share: float = 0.55
    input_size: int = DEFAULT_INPUT_SIZE
    batch_size: int = 32
    init: str = "imagenet"
    bach_slides: int = 10
    bracs_slides: int = 8
    tiles_per_slide: int = 16
    #: Synthetic whole-slide images per BACH-like class (pyramidal TIFFs, for slide search).
    wsi_per_class: int = 2
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: names(kind="ssl"))
    tiling: TilingConfig = field(default_factory=TilingConfig)
    progress: bool = True

    @property
    def data_dir(self) -> Path:
        return self.home / "data"


@dataclass
class DemoResult:
    seconds: dict[str, float]
    reports: dict[str, Path]
    tables: dict[str, Comparison]
    example: dict[str, Any]
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    slides: dict[str, Any] = field(default_factory=dict)


#: The demo's data sets: name -> layout (the shipped real H&E samples are a folder of class folders).
DEMO_SETS = {"bach": "bach", "bracs": "bracs", "samples": "folder", "slides": "slides"}


def make_data(config: DemoConfig) -> dict[str, Path]:
    """Synthetic BACH-like and BRACS-like sets, and the shipped real samples, by data set name."""
    bach = config.data_dir / "bach"
    bracs = config.data_dir / "bracs"
    write_synthetic(
        "bach", bach, slides=config.bach_slides, tiles_per_slide=config.tiles_per_slide, seed=config.seed
    )
    write_synthetic("bracs", bracs, slides=config.bracs_slides, tiles_per_slide=14, seed=config.seed)
    wsi = config.data_dir / "wsi"
    write_synthetic_slides(
        "bach", wsi, slides_per_class=config.wsi_per_class, seed=config.seed, size=(1536, 2048)
    )
    return {"bach": bach, "bracs": bracs, "samples": sample_dir(), "slides": wsi}


def train_all(
    config: DemoConfig, roots: dict[str, Path], say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Every SSL method on the BACH-like set, sharing the training part of the time budget.

    Returns each method's training record (steps, steps/s, seconds, loss)."""
    per_method = config.minutes * config.train_share / max(1, len(config.methods))
    start = "ImageNet weights (EfficientNet-Lite0)" if config.init == "imagenet" else "random weights"
    say(f"training {len(config.methods)} SSL methods from {start} on the CPU, {per_method:.1f} min each")
    records = {}
    for method in config.methods:
        folder = train(
            TrainConfig(
                method=method,
                data=roots["bach"],
                layout="bach",
                home=config.home,
                init=config.init,
                max_minutes=per_method,
                batch_size=config.batch_size,
                input_size=config.input_size,
                seed=config.seed,
                tiling=config.tiling,
                progress=config.progress,
            )
        )
        record = load_meta(folder).training
        records[method] = record
        say(
            f"trained {method}: {record['steps']} optimiser steps, {record['steps_per_second']:.2f} steps/s, "
            f"{record['seconds']:.0f} s"
        )
    return records


def ingest_all(
    config: DemoConfig, store: VectorStore, roots: dict[str, Path], say: Callable[[str], None]
) -> None:
    """Every tile of every set, with every trained encoder and every baseline."""
    folders = resolve_encoders("all", config.home / "encoders", input_size=config.input_size)
    embedders = {name: Embedder.from_artifact(folder) for name, folder in folders.items()}
    ingestor = Ingestor(store, embedders, batch_size=64)
    for dataset, root in roots.items():
        summary = ingest(
            scan_dataset(root, DEMO_SETS[dataset], dataset).records,
            ingestor,
            config.tiling,
            250_000_000,
            progress=config.progress,
        )
        say(
            f"ingested {dataset}: {summary.tiles} tiles, {summary.embedded} embedded, "
            f"{len(summary.failed)} failed"
        )


def example_query(store: VectorStore, encoder: str) -> dict[str, Any]:
    """One BACH-like tile as a query: its top 5 from other images."""
    query = next(store.scroll(SearchFilter(dataset="bach"), with_vectors=[encoder], page=1))
    hits = store.search(
        encoder,
        query.vectors[encoder],
        limit=5,
        filter=SearchFilter(dataset="bach", exclude_image_ids=(query.payload["image_id"],)),
        exact=True,
    )
    return {"query": query.payload, "encoder": encoder, "hits": [(h.score, h.payload) for h in hits]}


def slide_example(store: VectorStore, encoder: str, out: Path) -> dict[str, Any]:
    """One synthetic whole-slide image as a slide query (its mosaic, itself excluded) and the
    heatmap of its own best-matching tile over the slide ranked first."""
    slides = slide_ids_of(store, "slides")
    if not slides:
        return {}
    query = slides[0]
    vectors, payload = slide_mosaic(store, encoder, query)
    ranked = rank_slides(
        store, encoder, vectors, SearchFilter(exclude_slide_ids=(query,)), top_k=3, exact=True
    )
    top = ranked[0]
    payloads, scores = tile_similarities(store, encoder, top.slide_id, vectors)
    drawn = render_heatmap(
        TileSource(), payloads, scores, f"{top.slide_id}: similarity to {query}'s mosaic ({encoder})"
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"heatmap_{top.slide_id}.png"
    path.write_bytes(drawn.data)
    return {
        "query": query,
        "label": payload.get("label"),
        "encoder": encoder,
        "ranked": [(s.slide_id, s.label, s.score) for s in ranked],
        "heatmap": path,
    }


def run_demo(config: DemoConfig, store: VectorStore, say: Callable[[str], None] = print) -> DemoResult:
    """The whole path; returns timings, report paths, comparison tables and the example query."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    roots = make_data(config)
    seconds["data"] = time.perf_counter() - started
    training = train_all(config, roots, say)
    seconds["train"] = time.perf_counter() - started - sum(seconds.values())
    ingest_all(config, store, roots, say)
    seconds["ingest"] = time.perf_counter() - started - sum(seconds.values())
    reports, tables = {}, {}
    for dataset in ("bach", "bracs"):
        results = evaluate(store, dataset, ks=[1, 5, 10], progress=config.progress)
        conditions = row_conditions(results, config.home / "encoders")
        tables[dataset] = build_comparison(results, [1, 5, 10], conditions, config.seed)
        out = config.home / "reports" / dataset
        reports[dataset] = write_report(tables[dataset], dataset, out, {dataset: roots[dataset]}, True)
    seconds["evaluate"] = time.perf_counter() - started - sum(seconds.values())
    best = best_encoder(tables["bach"].results, "mMV@5")
    example = example_query(store, best)
    slides = slide_example(store, best, config.home / "reports" / "slides")
    seconds["total"] = time.perf_counter() - started
    return DemoResult(seconds, reports, tables, example, training, slides)
