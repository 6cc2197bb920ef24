"""solo-learn checkpoints become artifacts; anything outside the allow-list is refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from histo.embedding import Embedder
from histo.encoders.backbones import create_backbone
from histo.encoders.checkpoints import import_solo_learn
from histo.errors import InvalidInputError, NotFoundError
from histo.settings import get_settings
from tests.helpers import tissue_array


class Payload:
    """Stands in for arbitrary pickled code inside a malicious checkpoint."""


def _solo_checkpoint(path: Path, prefix: str = "backbone.", extra: object = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    backbone, _ = create_backbone("resnet18")
    state = {f"{prefix}{k}": v for k, v in backbone.state_dict().items()}
    state["projector.0.weight"] = torch.randn(8, 512)
    state["classifier.weight"] = torch.randn(10, 512)
    checkpoint = {
        "epoch": 399,
        "global_step": 1234,
        "state_dict": state,
        "hyper_parameters": {"cfg": argparse.Namespace(method="nnclr", backbone="resnet18")},
    }
    if extra is not None:
        checkpoint["callbacks"] = extra
    torch.save(checkpoint, path)
    return backbone.state_dict()


@pytest.mark.parametrize("prefix", ["backbone.", "encoder."])
def test_import_gives_the_checkpoints_backbone(tmp_path: Path, prefix: str) -> None:
    weights = _solo_checkpoint(tmp_path / "nnclr.ckpt", prefix)
    folder = import_solo_learn(tmp_path / "nnclr.ckpt", "nnclr", tmp_path / "nnclr-solo", input_size=32)
    embedder = Embedder.from_artifact(folder)
    assert embedder.meta.method == "nnclr" and embedder.meta.data["epoch"] == 399
    assert all(torch.equal(embedder.network.state_dict()[k], v) for k, v in weights.items())
    assert np.isfinite(embedder.embed(tissue_array(32, 32)[None])).all()


def test_arbitrary_objects_are_refused(tmp_path: Path) -> None:
    _solo_checkpoint(tmp_path / "evil.ckpt", extra=Payload())
    with pytest.raises(InvalidInputError, match=r"refused to unpickle.*Payload"):
        import_solo_learn(tmp_path / "evil.ckpt", "nnclr", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        import_solo_learn(tmp_path / "missing.ckpt", "nnclr", tmp_path / "out")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(InvalidInputError, match="not a PyTorch checkpoint"):
        import_solo_learn(tmp_path / "text.ckpt", "nnclr", tmp_path / "out")
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, tmp_path / "head.ckpt")
    with pytest.raises(InvalidInputError, match="no backbone weights"):
        import_solo_learn(tmp_path / "head.ckpt", "nnclr", tmp_path / "out")
    _solo_checkpoint(tmp_path / "ok.ckpt")
    with pytest.raises(InvalidInputError, match="baseline"):
        import_solo_learn(tmp_path / "ok.ckpt", "colorhist", tmp_path / "out")


def test_cli_import_and_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTO_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    _solo_checkpoint(tmp_path / "swav.ckpt")
    runner = CliRunner()
    result = runner.invoke(
        app, ["encoders", "import", str(tmp_path / "swav.ckpt"), "--from", "solo-learn", "--method", "swav"]
    )
    assert result.exit_code == 0, result.output
    listing = runner.invoke(app, ["encoders"])
    assert listing.exit_code == 0 and "swav" in listing.output and "barlow_twins" in listing.output
    bad = runner.invoke(
        app, ["encoders", "import", str(tmp_path / "swav.ckpt"), "--from", "timm", "--method", "swav"]
    )
    assert bad.exit_code == 1 and "unknown checkpoint source" in bad.output
