"""Nobody let in, nothing leaked: links out of the data set, pickled code, secrets, request sizes.

* Ingestion reads only files under the data set folder: a file link or a folder link leading out
  of it is one reported line and is never read; a link inside it is fine.
* Every ``torch.load`` in the shipped code passes ``weights_only=True``, and an artifact whose
  ``weights.pt`` carries pickled code is refused before that code can run.
* ``histocli serve`` with a token and a Qdrant API key: neither appears in its output, its logs or
  the errors its clients get, through a refused token, errors and a store outage.
* Message-size and pixel limits hold through a real server process.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from histo.client import AuthenticationError, SearchClient, ServiceError
from histo.data.datasets import scan_dataset
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import HistoError, ImageTooLargeError, InvalidInputError
from histo.settings import get_settings
from histo.store import open_store
from tests.helpers import write_image
from tests.integration.fake_qdrant import FakeQdrant

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHIPPED = ("histo", "cli", "services", "workers", "benchmarks")
TOKEN = "tok-5f0c1e2d9a7b4e31"
API_KEY = "qdrant-key-8d3a6b2c4e1f7a90"
runner = CliRunner()


# ------------------------------------------------------------------------------------------------
# Links out of the data set
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def linked_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A class-folder data set with links: out to a file, out to a folder, and within itself."""
    root, outside = tmp_path / "data", tmp_path / "private"
    write_image(outside / "secret.png", 64, 64)
    write_image(outside / "trove" / "t1.png", 64, 64)
    write_image(outside / "trove" / "t2.png", 64, 64)
    write_image(root / "tumour" / "a.png", 64, 64)
    (root / "tumour" / "b.png").symlink_to(outside / "secret.png")  # a file link out
    (root / "normal").symlink_to(outside / "trove", target_is_directory=True)  # a folder link out
    (root / "stroma").mkdir()
    (root / "stroma" / "c.png").symlink_to(Path("..") / "tumour" / "a.png")  # a link within: fine
    return root, outside


def test_scan_skips_links_out_of_the_root_with_one_line_each(linked_tree: tuple[Path, Path]) -> None:
    root, outside = linked_tree
    result = scan_dataset(root, "folder")
    assert sorted(r.rel_path for r in result.records) == ["stroma/c.png", "tumour/a.png"]
    reasons = {Path(p.path).relative_to(root).as_posix(): p.reason for p in result.problems}
    assert reasons == {
        "normal": "folder resolves outside the data set folder; not followed",
        "tumour/b.png": "resolves outside the data set folder; not followed",
    }
    assert not any(str(outside) in p.path or "\n" in p.reason for p in result.problems)


def test_bach_photos_folder_linked_out_is_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "bach", tmp_path / "elsewhere"
    write_image(root / "Photos" / "Normal" / "n1.tif", 64, 64)
    write_image(outside / "b1.tif", 64, 64)
    (root / "Photos" / "Benign").symlink_to(outside, target_is_directory=True)
    result = scan_dataset(root, "bach")
    assert [r.rel_path for r in result.records] == ["Photos/Normal/n1.tif"]
    assert [(Path(p.path).name, "outside" in p.reason) for p in result.problems] == [("Benign", True)]


def test_ingest_never_reads_through_links_out(
    linked_tree: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = linked_tree
    home = tmp_path / "home"
    for name in [n for n in os.environ if n.startswith("HISTO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HISTO_HOME", str(home))
    monkeypatch.setenv("HISTO_TILING__TILE_SIZE", "64")
    make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=64)
    get_settings.cache_clear()
    try:
        result = runner.invoke(
            app, ["ingest", str(root), "-d", "folder", "-e", "colorhist", "--workers", "0", "--json"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["tiles"], summary["embedded"]) == (2, 2, 2)
    assert sorted(Path(f["path"]).name for f in summary["failures"]) == ["b.png", "normal"]
    with open_store(path=home / "index") as store:
        paths = sorted(r.payload["path"] for r in store.scroll())
    assert paths == ["stroma/c.png", "tumour/a.png"]  # nothing from outside the data set


# ------------------------------------------------------------------------------------------------
# Pickled code
# ------------------------------------------------------------------------------------------------


def _torch_loads(folder: Path) -> Iterator[tuple[str, ast.Call]]:
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
            ):
                target = node.func.value
                if isinstance(target, ast.Name) and target.id == "torch":
                    yield f"{path.relative_to(REPO)}:{node.lineno}", node


def test_every_torch_load_passes_weights_only_true() -> None:
    calls = [(where, call) for folder in SHIPPED for where, call in _torch_loads(REPO / folder)]
    # one call site, which every loader (artifact, backbone weights, solo-learn checkpoints, the
    # shipped ImageNet weights of EfficientNet-Lite0, in backbones.py) goes through
    assert [where.split(":")[0] for where, _ in calls] == ["histo/encoders/safe_load.py"]
    for loader in ("artifact", "backbones", "checkpoints"):
        assert "load_tensors(" in (REPO / "histo" / "encoders" / f"{loader}.py").read_text()
    unsafe = [
        where
        for where, call in calls
        if not any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in call.keywords
        )
    ]
    assert unsafe == [], f"torch.load without weights_only=True: {unsafe}"
    # and nobody imports it under another name, where the walk above would not see it
    text = "\n".join(p.read_text() for folder in SHIPPED for p in (REPO / folder).rglob("*.py"))
    assert not re.search(r"from torch import[^\n]*\bload\b|torch\.serialization\.load\(", text)


class WritesAFile:
    """Unpickling this runs code: it writes ``marker`` (what a hostile weights file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_an_artifact_with_pickled_code_is_refused_and_the_code_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    folder = make_baseline_artifact("random", home / "encoders" / "random", input_size=32)
    marker = tmp_path / "pwned.txt"
    state = torch.load(folder / "weights.pt", weights_only=True)
    torch.save({**state, "extra": WritesAFile(marker)}, folder / "weights.pt")

    with pytest.raises(
        InvalidInputError, match=r"weights\.pt: refused to load.*\(it contains [\w.]*exec\)"
    ) as caught:
        Embedder.from_artifact(folder)
    assert "\n" not in str(caught.value) and not marker.exists()

    for name in [n for n in os.environ if n.startswith("HISTO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HISTO_HOME", str(home))
    write_image(tmp_path / "data" / "x" / "a.png", 64, 64)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["ingest", str(tmp_path / "data"), "-d", "folder", "-e", "random"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "refused to load" in result.output and "Traceback" not in result.output
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# A real server: secrets stay out of output, logs and errors; size limits hold
# ------------------------------------------------------------------------------------------------


def _png(size: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_serve_keeps_secrets_out_of_everything_and_enforces_limits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=64)
    dim = Embedder.from_artifact(home / "encoders" / "colorhist").dim
    fake = FakeQdrant({"colorhist": dim}).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update(
        HISTO_HOME=str(home),
        HISTO_TILING__TILE_SIZE="64",
        HISTO_QDRANT__URL=fake.url,
        HISTO_QDRANT__API_KEY=API_KEY,
        HISTO_GRPC__TOKEN=TOKEN,
        HISTO_GRPC__MAX_MESSAGE_MB="1",
        HISTO_IMAGES__MAX_PIXELS="5000",
        PYTHONUNBUFFERED="1",
    )
    server = subprocess.Popen(
        [str(BIN / "histocli"), "serve", "--port", "0", "--torch-threads", "1", "--grace", "1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    answers: list[str] = []
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"listening on (127\.0\.0\.1:\d+) \(plaintext, token required\)", line)
        assert match, line + server.stderr.read() if server.stderr else line
        address = match.group(1)
        for token in (None, "wrong-token"):
            with SearchClient(address, token=token, timeout=30) as stranger:
                with pytest.raises(AuthenticationError) as refused:
                    stranger.search(vector=[0.5] * dim)
                answers.append(str(refused.value))
        with SearchClient(address, token=TOKEN, timeout=60) as client:
            client.wait_ready(60)
            assert client.search(vector=[0.5] * dim, top_k=2).hits == []
            failing = [
                lambda: client.search(point_id="00000000-0000-4000-8000-000000000000"),  # NOT_FOUND
                lambda: client.search(vector=[0.5] * dim, encoder="nope"),  # INVALID_ARGUMENT
                lambda: client.stats(),  # the fake has no facets: a store error
            ]
            for call in failing:
                with pytest.raises(HistoError) as caught:
                    call()
                answers.append(str(caught.value))
            with pytest.raises(ServiceError, match="HISTO_GRPC__MAX_MESSAGE_MB") as too_long:
                client.search(image=b"\x89PNG" + os.urandom(1_200_000))
            assert too_long.value.grpc_code == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]
            with pytest.raises(ImageTooLargeError, match="HISTO_IMAGES__MAX_PIXELS") as too_big:
                client.search(image=_png(100))  # 10,000 px > 5,000
            assert too_big.value.grpc_code == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]
            answers += [str(too_long.value), str(too_big.value)]
            fake.stop()
            with pytest.raises(HistoError, match="cannot reach Qdrant") as outage:
                client.search(vector=[0.5] * dim)
            answers.append(str(outage.value))
    finally:
        fake.stop()
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert any(r.headers.get("api-key") == API_KEY for r in fake.requests)  # the key was in use
    logs = [
        p.read_text(errors="replace")
        for p in home.rglob("*")
        if p.is_file() and p.suffix in (".log", ".tsv", ".txt", ".json")
    ]
    everything = "\n".join([line, out, err, *answers, *logs])
    assert "Traceback" not in err
    assert TOKEN not in everything and API_KEY not in everything
    assert len(answers) == 8 and all(answers)
