"""One Settings object, read from HISTO_* variables with ``__`` nesting; state under HISTO_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from histo.settings import Settings


def test_defaults_keep_all_state_under_dot_histo(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HISTO_HOME", "HISTO_TILING__TILE_SIZE", "HISTO_QDRANT__URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.home == Path(".histo")
    assert {settings.index_dir.parent, settings.encoders_dir.parent, settings.reports_dir.parent} == {
        Path(".histo")
    }
    assert settings.tiling.tile_size == 224 and settings.qdrant.url is None


def test_environment_overrides_nested_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HISTO_HOME", str(tmp_path))
    monkeypatch.setenv("HISTO_TILING__TILE_SIZE", "256")
    monkeypatch.setenv("HISTO_IMAGES__MAX_PIXELS", "1000")
    monkeypatch.setenv("HISTO_GRPC__TOKEN", "s3cret")
    settings = Settings()
    assert settings.logs_dir == tmp_path / "logs"
    assert (settings.tiling.tile_size, settings.images.max_pixels) == (256, 1000)
    assert settings.grpc.token is not None and settings.grpc.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTO_TILING__MIN_TISSUE", "2")
    with pytest.raises(ValidationError, match="min_tissue"):
        Settings()
