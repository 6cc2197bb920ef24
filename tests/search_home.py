"""A small real search home shared by the gRPC and web tests: synthetic BACH and BRACS, ingested
into the embedded index with two encoders that need no training (colorhist and random)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.ingest import Ingestor, ingest
from histo.store import Point, SearchFilter, open_store

TILE = 64


def build_home(home: Path) -> None:
    """Synthetic BACH (12 images x 2 tiles) and BRACS (21 RoIs, 3 slides and splits), embedded
    with colorhist and random (ResNet-18, 64 px input) into the embedded index."""
    data, encoders = home / "data", home / "encoders"
    write_synthetic("bach", data / "bach", slides=3, tiles_per_slide=8, seed=0, tile_size=TILE)
    write_synthetic("bracs", data / "bracs", slides=3, tiles_per_slide=7, seed=1, tile_size=TILE)
    for name in ("colorhist", "random"):
        make_baseline_artifact(name, encoders / name, input_size=TILE)
    embedders = {n: Embedder.from_artifact(encoders / n, device="cpu") for n in ("colorhist", "random")}
    with open_store(path=home / "index") as store:
        ingestor = Ingestor(store, embedders, batch_size=32)
        for name in ("bach", "bracs"):
            records = scan_dataset(data / name, name).records
            ingest(records, ingestor, TilingConfig(tile_size=TILE), 10**8, num_workers=0, progress=False)
        # the synthetic BRACS has slides but no patients: give each slide one, to filter on
        bracs = list(store.scroll(SearchFilter(dataset="bracs")))
        store.upsert(
            Point(r.id, payload={**r.payload, "patient_id": f"P{r.payload['slide_id']}"}) for r in bracs
        )


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
