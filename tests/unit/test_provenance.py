"""Vectors know the artifact that made them: stamps, re-embedding, refusals, and train's guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.artifact import artifact_digest, load_meta, save_artifact
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import StaleVectorsError
from histo.ingest import Ingestor, ingest
from histo.provenance import provenance, refuse_stale, stale_datasets
from histo.search import SearchEngine
from histo.settings import get_settings
from histo.store import Point, SearchFilter, open_store
from histo.store.base import STAMP_KEY, stamp_field

TILE = 64
runner = CliRunner()


def rewrite(folder: Path, seed: int) -> None:
    """The same encoder name, other weights: what retraining does to an artifact."""
    import torch

    meta = load_meta(folder)
    torch.manual_seed(seed)
    state = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in _weights(folder).items()
    }
    save_artifact(folder, meta, state)


def _weights(folder: Path) -> dict:
    from histo.encoders.artifact import load_weights

    return load_weights(folder)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_synthetic("bach", tmp_path / "bach", slides=2, tiles_per_slide=4, seed=0, tile_size=TILE)
    write_synthetic("bracs", tmp_path / "bracs", slides=2, tiles_per_slide=7, seed=1, tile_size=TILE)
    return tmp_path


def run_ingest(store, root: Path, layout: str, encoders: dict[str, Embedder], name: str | None = None):
    records = scan_dataset(root, layout, name).records
    return ingest(records, Ingestor(store, encoders, 32), TilingConfig(tile_size=TILE), 10**8, 0, False)


def test_digest_is_the_model_not_the_file_times(tmp_path: Path) -> None:
    first = make_baseline_artifact("random", tmp_path / "a", input_size=TILE)
    again = make_baseline_artifact("random", tmp_path / "b", input_size=TILE)  # written anew, same model
    assert artifact_digest(first) == artifact_digest(again) and len(artifact_digest(first)) == 16
    rewrite(again, seed=1)
    assert artifact_digest(again) != artifact_digest(first)
    other_size = make_baseline_artifact("random", tmp_path / "c", input_size=2 * TILE)  # preprocessing
    assert artifact_digest(other_size) != artifact_digest(first)
    pooled_once = Embedder.from_artifact(first, orientation_pooling=1)  # other vectors: another digest
    assert Embedder.from_artifact(first).digest == artifact_digest(first) != pooled_once.digest


def test_every_vector_is_stamped_and_a_retrained_encoder_is_embedded_again(
    data: Path, tmp_path: Path
) -> None:
    folder = make_baseline_artifact("random", tmp_path / "enc" / "random", input_size=TILE)
    colour = make_baseline_artifact("colorhist", tmp_path / "enc" / "colorhist", input_size=TILE)
    old = {"random": Embedder.from_artifact(folder), "colorhist": Embedder.from_artifact(colour)}
    with open_store(path=tmp_path / "index") as store:
        first = run_ingest(store, data / "bach", "bach", old)
        points = list(store.scroll())
        assert first.embedded == len(points) > 0 and first.reembedded == 0
        assert all(p.payload[STAMP_KEY] == {n: e.digest for n, e in old.items()} for p in points)
        rerun = run_ingest(store, data / "bach", "bach", old)
        assert (rerun.embedded, rerun.skipped) == (0, len(points))  # same artifacts: already indexed
        rewrite(folder, seed=2)
        new = {"random": Embedder.from_artifact(folder)}
        assert provenance(store, "random", new["random"].digest).stale == len(points)
        with pytest.raises(StaleVectorsError, match="drop --no-reembed"):
            refuse_stale(store, {"random": new["random"].digest}, "bach")
        again = run_ingest(store, data / "bach", "bach", new)
        assert again.embedded == again.reembedded == len(points)  # not "already indexed"
        after = {r.id: r for r in store.scroll(with_vectors=["random"])}
        assert all(
            r.payload[STAMP_KEY] == {"random": new["random"].digest, "colorhist": old["colorhist"].digest}
            for r in after.values()
        )
        vectors = new["random"].embed(np.stack([np.zeros((TILE, TILE, 3), np.uint8)]))  # a sanity shape
        assert vectors.shape == (1, new["random"].dim)
        assert store.count_values(stamp_field("random")) == {new["random"].digest: len(points)}


def test_search_refuses_an_encoder_whose_vectors_another_artifact_made(data: Path, tmp_path: Path) -> None:
    folder = make_baseline_artifact("random", tmp_path / "enc" / "random", input_size=TILE)
    colour = make_baseline_artifact("colorhist", tmp_path / "enc" / "colorhist", input_size=TILE)
    with open_store(path=tmp_path / "index") as store:
        run_ingest(
            store,
            data / "bach",
            "bach",
            {"random": Embedder.from_artifact(folder), "colorhist": Embedder.from_artifact(colour)},
        )
        run_ingest(store, data / "bracs", "bracs", {"random": Embedder.from_artifact(folder)}, "mybracs")
        rewrite(folder, seed=3)
        engine = SearchEngine.load(
            store, tmp_path / "enc", tiling=TilingConfig(tile_size=TILE), warm_up=False
        )
        assert engine.encoders == ["colorhist"] and engine.default == "colorhist"  # random is not offered
        assert set(engine.stale) == {"random"}
        with pytest.raises(StaleVectorsError) as refused:
            engine.search(vector=[1.0] * engine.embedder("colorhist").dim, encoder="random")
        message = str(refused.value)
        assert "data sets bach (8), mybracs (14)" in message and "--allow-stale" in message
        assert "histocli ingest" in message and "--layout bracs --name mybracs -e random" in message
        found = provenance(store, "random", Embedder.from_artifact(folder).digest)
        assert stale_datasets(store, found) == {"bach": 8, "mybracs": 14}
        warned = SearchEngine.load(
            store, tmp_path / "enc", tiling=TilingConfig(tile_size=TILE), stale="warn", warm_up=False
        )
        assert warned.encoders == ["colorhist", "random"]  # searched anyway, knowingly
        query = next(store.scroll(SearchFilter(dataset="bach"), with_vectors=["random"], page=1))
        assert warned.search(point_id=query.id, encoder="random", top_k=3).hits


def test_vectors_without_a_record_are_searched_and_embedded_again(data: Path, tmp_path: Path) -> None:
    """Points written before histo recorded artifacts (or through the store API): unknown origin."""
    folder = make_baseline_artifact("colorhist", tmp_path / "enc" / "colorhist", input_size=TILE)
    embedder = Embedder.from_artifact(folder)
    with open_store(path=tmp_path / "index") as store:
        run_ingest(store, data / "bach", "bach", {"colorhist": embedder})
        bare = [
            Point(r.id, payload={k: v for k, v in r.payload.items() if k != STAMP_KEY})
            for r in store.scroll()
        ]
        store.upsert(bare)
        engine = SearchEngine(
            store, {"colorhist": embedder}, tiling=TilingConfig(tile_size=TILE), warm_up=False
        )
        assert engine.encoders == ["colorhist"]
        again = run_ingest(store, data / "bach", "bach", {"colorhist": embedder})
        assert again.embedded == again.reembedded == len(bare)
        assert store.count_values(stamp_field("colorhist")) == {embedder.digest: len(bare)}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Path) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HISTO_HOME", str(home))
    monkeypatch.setenv("HISTO_TILING__TILE_SIZE", str(TILE))
    monkeypatch.setenv("COLUMNS", "300")
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def test_train_will_not_replace_an_indexed_artifact(home: Path, data: Path) -> None:
    folder = make_baseline_artifact("random", home / "encoders" / "simclr", input_size=TILE)  # stands in
    digest = artifact_digest(folder)
    with open_store(path=home / "index") as store:
        run_ingest(store, data / "bach", "bach", {"simclr": Embedder.from_artifact(folder)})
    args = ["train", "simclr", "--data", str(data / "bach"), "--layout", "bach", "--steps", "1"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1, refused.output
    assert "made the 8 simclr vectors in the index" in refused.output and "--name simclr_2" in refused.output
    assert "--force" in refused.output and artifact_digest(folder) == digest  # nothing touched
    taken = runner.invoke(app, [*args, "--name", "imagenet"])
    assert taken.exit_code == 1 and "registered encoder's name" in taken.output
    baseline = runner.invoke(app, ["train", "imagenet", "--data", str(data / "bach"), "--layout", "bach"])
    assert baseline.exit_code == 1 and "is a baseline: it needs no training" in baseline.output
    typo = runner.invoke(app, ["train", "simclrr", "--data", str(data / "bach"), "--layout", "bach"])
    assert typo.exit_code == 1 and "did you mean 'simclr'" in typo.output
    assert "imagenet" not in typo.output and "random" not in typo.output  # only trainable methods


def test_an_interrupted_save_leaves_the_old_artifact_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_baseline_artifact("random", tmp_path / "random", input_size=TILE)
    before = artifact_digest(folder)
    meta, state = load_meta(folder), _weights(folder)
    import torch

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(folder, meta, {k: v * 2 for k, v in state.items()})
    assert artifact_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random"]  # no partial folder left


def test_snapshot_and_restore_keep_which_artifact_made_each_vector(data: Path, tmp_path: Path) -> None:
    from histo.snapshots import create_snapshot, restore_snapshot

    home = tmp_path / "home"
    folder = make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=TILE)
    embedder = Embedder.from_artifact(folder)
    with open_store(path=home / "index") as store:
        run_ingest(store, data / "bach", "bach", {"colorhist": embedder})
        taken = create_snapshot(store, tmp_path / "one.snapshot", home / "encoders")
        assert taken.manifest["artifacts"] == {"colorhist": {embedder.digest: 8}}
        assert taken.manifest["encoders"]["colorhist"]["digest"] == embedder.digest
        store.drop()
        rewrite_colour = make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=TILE)
        assert artifact_digest(rewrite_colour) == embedder.digest  # written again: the same model
        restored = restore_snapshot(store, tmp_path / "one.snapshot", home / "encoders")
        assert restored.warnings == []
        assert store.count_values(stamp_field("colorhist")) == {embedder.digest: 8}
        make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=2 * TILE)  # another
        elsewhere = restore_snapshot(store, tmp_path / "one.snapshot", home / "encoders")
        assert any(
            "8 of the snapshot's 'colorhist' vectors were made by another artifact" in w
            for w in elsewhere.warnings
        )
        manifest = json.loads(json.dumps(taken.manifest))
        assert manifest["artifacts"]["colorhist"] == {embedder.digest: 8}


def test_train_under_a_new_name_or_with_force_and_says_what_next(home: Path, data: Path) -> None:
    args = ["train", "simclr", "--data", str(data / "bach"), "--layout", "bach", "--steps", "1"]
    small = ["--batch-size", "4", "--input-size", "32", "--workers", "0"]
    first = runner.invoke(app, [*args, *small])
    assert first.exit_code == 0, first.output
    assert "1 optimiser steps (--steps as given" in first.output
    assert "next: histocli ingest" in first.output and "--layout bach --name bach -e simclr" in first.output
    old = artifact_digest(home / "encoders" / "simclr")
    beside = runner.invoke(app, [*args, *small, "--name", "simclr_2", "--seed", "1"])
    assert beside.exit_code == 0 and (home / "encoders" / "simclr_2" / "artifact.json").is_file()
    assert artifact_digest(home / "encoders" / "simclr") == old  # the first one untouched
    again = runner.invoke(app, [*args, "--batch-size", "4", "--input-size", "48", "--workers", "0"])
    assert again.exit_code == 0, again.output  # nothing of it is indexed: replaced without --force
    assert "note: simclr now sees 48 px, the artifact it replaced saw 32 px" in again.output
    assert artifact_digest(home / "encoders" / "simclr") != old


def test_migration_carries_and_checks_which_artifact_made_each_vector(data: Path, tmp_path: Path) -> None:
    from histo.migration import migrate
    from histo.store import ServerStore

    folder = make_baseline_artifact("colorhist", tmp_path / "enc" / "colorhist", input_size=TILE)
    embedder = Embedder.from_artifact(folder)
    with open_store(path=tmp_path / "index") as edge, ServerStore.in_memory() as server:
        run_ingest(edge, data / "bach", "bach", {"colorhist": embedder})
        done = migrate(edge, server, tmp_path / "checkpoint.json", sample=8)
        assert done.verification.ok and done.copied == 8
        assert server.count_values(stamp_field("colorhist")) == {embedder.digest: 8}
        assert (
            server.inventory()["artifacts"]
            == edge.inventory()["artifacts"]
            == {"colorhist": {embedder.digest: 8}}
        )
        copy = SearchEngine(
            server, {"colorhist": embedder}, tiling=TilingConfig(tile_size=TILE), warm_up=False
        )
        assert copy.encoders == ["colorhist"]  # the copy's vectors are known to be this artifact's
