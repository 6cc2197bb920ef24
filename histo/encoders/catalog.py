"""Which encoders an operation uses: artifact folders by name, baselines made on demand.

Named vectors in the index are keyed by artifact name, so ``--encoders nnclr,colorhist`` means
the artifacts ``HISTO_HOME/encoders/nnclr`` and ``…/colorhist``. Baselines need no training, so
their artifacts are written the first time they are asked for.
"""

from __future__ import annotations

from pathlib import Path

from histo.encoders.artifact import META_FILE, list_artifacts
from histo.encoders.baselines import make_baseline_artifact
from histo.encoders.registry import get_spec, names
from histo.errors import InvalidInputError, unknown_name


def resolve_encoders(selection: str, encoders_dir: Path, input_size: int = 224) -> dict[str, Path]:
    """``all`` (every artifact plus every available baseline) or a comma list, to artifact folders."""
    wanted = _expand(selection, encoders_dir)
    return {name: _artifact_for(name, encoders_dir, input_size) for name in wanted}


def _expand(selection: str, encoders_dir: Path) -> list[str]:
    if selection.strip() == "all":
        present = [folder.name for folder, _ in list_artifacts(encoders_dir)]
        baselines = names(kind="baseline", only_available=True)
        return list(dict.fromkeys(present + baselines))
    chosen = [name.strip() for name in selection.split(",") if name.strip()]
    if not chosen:
        raise InvalidInputError(
            "no encoders given; use --encoders all or a comma list such as nnclr,colorhist"
        )
    return list(dict.fromkeys(chosen))


def _artifact_for(name: str, encoders_dir: Path, input_size: int) -> Path:
    folder = encoders_dir / name
    if (folder / META_FILE).is_file():
        return folder
    known = [f.name for f, _ in list_artifacts(encoders_dir)] + names()
    if name not in names():
        raise unknown_name("encoder", name, sorted(set(known)))
    if get_spec(name).kind == "baseline":
        return make_baseline_artifact(name, folder, input_size=input_size)
    raise InvalidInputError(
        f"no trained {name} encoder in {encoders_dir}; "
        f"train it first: histocli train {name} --data DIR --layout LAYOUT"
    )
