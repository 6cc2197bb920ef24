"""Fused-encoder evaluation and the simulated feedback round, on a small real embedded index whose
vectors are clustered by label ("good", and "twin" with the very same vectors) or pure noise."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.errors import InvalidInputError
from histo.evaluation import evaluate
from histo.query_evaluation import evaluate_fusion, leave_one_out_filter, simulate_feedback
from histo.settings import get_settings
from histo.store import EdgeStore, Point, VectorStore

LABELS = ("a", "b", "c")


def points() -> list[Point]:
    rng = np.random.default_rng(0)
    centres = {label: rng.normal(size=8) for label in LABELS}
    out = []
    for slide in range(6):
        for label, centre in centres.items():
            for _tile in range(3):
                good = centre + 0.6 * rng.normal(size=8)
                payload = {
                    "dataset": "bach",
                    "label": label,
                    "image_id": f"{label}{slide}",
                    "slide_id": f"s{slide}",
                }
                vectors = {"good": good, "twin": good, "noise": rng.normal(size=8)}
                out.append(Point(str(uuid.uuid4()), vectors, payload))
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    with EdgeStore(home / "index") as store:
        store.ensure_vectors({"good": 8, "twin": 8, "noise": 8})
        store.upsert(points())
    return home


@pytest.fixture
def store(home: Path) -> Iterator[VectorStore]:
    with EdgeStore(home / "index") as s:
        yield s


def test_fusing_a_vector_with_its_twin_scores_as_the_vector_alone(store: VectorStore) -> None:
    """The store's leave-one-out (filters) and the numpy one (masks) exclude the same tiles."""
    single = evaluate(store, "bach", ["good"], ks=[1, 5], progress=False)["good"].summary["overall"]
    fused = evaluate_fusion(store, "bach", ["good", "twin"], "rrf", ks=[1, 5], progress=False)
    assert fused.summary["overall"] == pytest.approx(single)
    assert fused.summary["fusion"] == {"method": "rrf", "encoders": ["good", "twin"], "depth": 100}
    assert fused.summary["candidates"] == 54 and not fused.summary["sampled"]


def test_noise_drags_a_fusion_below_the_good_vector_alone(store: VectorStore) -> None:
    good = evaluate(store, "bach", ["good"], ks=[5], progress=False)["good"].summary["overall"]["P@5"]
    for fusion in ("rrf", "dbsf"):
        mixed = evaluate_fusion(store, "bach", ["good", "noise"], fusion, ks=[5], progress=False)
        assert 1 / 3 < mixed.summary["overall"]["P@5"] < good - 0.05
    sampled = evaluate_fusion(store, "bach", ["good", "noise"], ks=[5], max_queries=10, progress=False)
    assert sampled.summary["sampled"] and sampled.summary["queries"] == 10


def test_a_feedback_round_beats_the_next_page_for_a_clustered_vector(store: VectorStore) -> None:
    rounds = simulate_feedback(store, "bach", "good", ("average_vector", "best_score"), progress=False)
    assert [r.strategy for r in rounds] == ["average_vector", "best_score"]
    for r in rounds:
        assert r.queries == 54 and r.first > 0.6 and r.after > r.next_page
    noise = simulate_feedback(store, "bach", "noise", progress=False)[0]
    assert noise.first < 0.5 and noise.as_dict()["P@10 after feedback"] == round(noise.after, 4)


def test_leave_one_out_filter_drops_own_image_and_patient_or_slide() -> None:
    flt = leave_one_out_filter("bach", {"image_id": "i", "slide_id": "s", "patient_id": "p"})
    assert (flt.exclude_image_ids, flt.exclude_patient_ids, flt.exclude_slide_ids) == (("i",), ("p",), ())
    assert leave_one_out_filter("bach", {"image_id": "i", "slide_id": "s"}).exclude_slide_ids == ("s",)


def test_errors(store: VectorStore) -> None:
    with pytest.raises(InvalidInputError, match="at least two encoders"):
        evaluate_fusion(store, "bach", ["good"], progress=False)
    with pytest.raises(InvalidInputError, match="unknown strategy"):
        simulate_feedback(store, "bach", "good", ("best",), progress=False)
    with pytest.raises(InvalidInputError, match="at least 21 labelled tiles"):
        simulate_feedback(store, "crc", "good", progress=False)


def test_histocli_evaluate_fusion_and_feedback(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTO_HOME", str(home))
    get_settings.cache_clear()
    try:
        args = ["evaluate", "-d", "bach", "-e", "good,noise", "--fusion", "rrf", "--feedback", "-k", "1,5"]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        bad = CliRunner().invoke(app, ["evaluate", "-d", "bach", "--fusion", "rrf", "--level", "slide"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    for text in ("rrf(good+noise)", "one simulated feedback round", "average_vector", "P@10 after"):
        assert text in result.output
    (folder,) = (home / "reports" / "bach").iterdir()  # one new folder per run
    assert (folder / "report.md").read_text().count("rrf(good+noise)") >= 1
    assert (folder / "feedback.png").is_file()
    assert bad.exit_code == 1 and "drop --level slide" in bad.output
