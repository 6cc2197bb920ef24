"""Encoder artifacts: weights plus the metadata that fixes their preprocessing.

An artifact is a folder ``<name>/`` with ``artifact.json`` and, for neural encoders,
``weights.pt`` (a plain state dict, always loaded with ``weights_only=True``). Ingestion and
queries read input size, mean/std and orientation pooling from here only, so they cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


#: Metadata that decides which vector a tile gets (with the weights): the digest covers these.
VECTOR_FIELDS = (
    "kind",
    "method",
    "architecture",
    "embedding_dim",
    "input_size",
    "mean",
    "std",
    "orientation_pooling",
    "extra",
)
#: Hex digits of SHA-256 kept in a digest: stamped on every point, so short, and still far from
#: any chance of two artifacts of one index sharing one (2^-64 per pair).
DIGEST_HEX = 16


def save_artifact(out_dir: Path, meta: ArtifactMeta, state_dict: dict[str, torch.Tensor] | None) -> Path:
    """Write the artifact folder whole, then put it in place: it is written beside ``out_dir``
    (weights first, metadata last) and swapped in by renaming, so a run stopped at any moment
    leaves either the old artifact or the new one, never a mix (``replace_folder``)."""
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if state_dict is not None:
            cpu_state = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
            torch.save(cpu_state, partial / WEIGHTS_FILE)
        (partial / META_FILE).write_text(json.dumps(asdict(meta), indent=2, sort_keys=True))
        replace_folder(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and removed after,
    or put back if the rename fails (the name is free only between two renames)."""
    aside = target.parent / f".{target.name}.old-{os.getpid()}"
    had_old = target.exists()
    if had_old:
        shutil.rmtree(aside, ignore_errors=True)
        target.rename(aside)
    try:
        new.rename(target)
    except BaseException:
        if had_old:
            aside.rename(target)
        raise
    if had_old:
        shutil.rmtree(aside, ignore_errors=True)


def artifact_digest(folder: Path) -> str:
    """What identifies the model an artifact embeds with: SHA-256 over its weights file and the
    metadata that shape its vectors (``VECTOR_FIELDS``), cut to ``DIGEST_HEX`` hex digits. The
    same digest means the same vectors; a retrained, re-imported or edited artifact gets another.
    Its creation time and training log are left out, so a baseline written again keeps its digest."""
    folder = Path(folder)
    meta = asdict(load_meta(folder))
    digest = hashlib.sha256(json.dumps({k: meta[k] for k in VECTOR_FIELDS}, sort_keys=True).encode())
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        with open(weights, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:DIGEST_HEX]


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
    # names starting with "." are artifacts being written or replaced (``save_artifact``)
    folders = (p for p in encoders_dir.iterdir() if not p.name.startswith(".") and (p / META_FILE).is_file())
    for folder in sorted(folders):
        try:
            found.append((folder, load_meta(folder)))
        except InvalidInputError:
            continue
    return found
