"""Encoder artifacts: weights plus the metadata that fixes their preprocessing.

An artifact is a folder ``<name>/`` with ``artifact.json`` and, for neural encoders,
``weights.pt`` (a plain state dict, always loaded with ``weights_only=True``). Ingestion and
queries read input size, mean/std and orientation pooling from here only, so they cannot drift.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from histo import __version__
from histo.encoders.safe_load import load_tensors
from histo.errors import InvalidInputError, NotFoundError

META_FILE = "artifact.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1
ORIENTATION_CHOICES = (1, 4, 8)


@dataclass
class ArtifactMeta:
    """Everything needed to rebuild an encoder and feed it exactly as it was trained."""

    name: str
    kind: str
    method: str
    architecture: str
    embedding_dim: int
    input_size: int
    mean: list[float]
    std: list[float]
    orientation_pooling: int = 4
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    histo_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.orientation_pooling not in ORIENTATION_CHOICES:
            raise InvalidInputError(
                f"orientation pooling {self.orientation_pooling} is not one of {ORIENTATION_CHOICES}"
            )


def save_artifact(out_dir: Path, meta: ArtifactMeta, state_dict: dict[str, torch.Tensor] | None) -> Path:
    """Write the artifact folder (weights first, metadata last: a folder with metadata is complete)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        cpu_state = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
        torch.save(cpu_state, out_dir / WEIGHTS_FILE)
    temp = out_dir / (META_FILE + ".tmp")
    temp.write_text(json.dumps(asdict(meta), indent=2, sort_keys=True))
    temp.replace(out_dir / META_FILE)
    return out_dir


def load_meta(path: Path) -> ArtifactMeta:
    """Read an artifact's metadata; ``path`` is the folder or its ``artifact.json``."""
    folder = path.parent if path.name == META_FILE else path
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise NotFoundError(
            f"{folder}: no encoder artifact here (missing {META_FILE}); train or import one first"
        )
    try:
        raw = json.loads(meta_path.read_text())
        return ArtifactMeta(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InvalidInputError(f"{meta_path}: not a histo artifact ({exc}); re-create it") from None


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The artifact's state dict, loaded without unpickling arbitrary objects."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise NotFoundError(f"{folder}: artifact has no {WEIGHTS_FILE}; re-create it")
    state = load_tensors(path, "weights file", "re-create the artifact from a trusted source")
    if not isinstance(state, dict):
        raise InvalidInputError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def list_artifacts(encoders_dir: Path) -> list[tuple[Path, ArtifactMeta]]:
    """Every complete artifact under ``encoders_dir``, by name."""
    if not encoders_dir.is_dir():
        return []
    found = []
    for folder in sorted(p for p in encoders_dir.iterdir() if (p / META_FILE).is_file()):
        try:
            found.append((folder, load_meta(folder)))
        except InvalidInputError:
            continue
    return found
