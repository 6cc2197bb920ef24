"""Which encoders an operation uses: artifact folders by name, baselines made on demand.

Named vectors in the index are keyed by artifact name, so ``--encoders nnclr,colorhist`` means
the artifacts ``HISTO_HOME/encoders/nnclr`` and ``…/colorhist``. Baselines need no training, so
their artifacts are written the first time they are asked for — at the input size of the trained
encoders they are ingested with, so that their rows compare like for like (an ImageNet baseline at
224 px against an SSL encoder at 96 px differs by input size as much as by method).
"""

from __future__ import annotations

from pathlib import Path

from histo.encoders import DEFAULT_INPUT_SIZE
from histo.encoders.artifact import META_FILE, list_artifacts, load_meta
from histo.encoders.baselines import make_baseline_artifact
from histo.encoders.registry import get_spec, names
from histo.errors import InvalidInputError, unknown_name


def resolve_encoders(selection: str, encoders_dir: Path, input_size: int | None = None) -> dict[str, Path]:
    """``all`` (every artifact plus every available baseline) or a comma list, to artifact folders.

    Baselines made now take ``input_size`` — an existing baseline at another size is made again —
    or, without it, the input size of the trained encoders in the selection."""
    wanted = _expand(selection, encoders_dir)
    size = input_size or trained_input_size(wanted, encoders_dir) or DEFAULT_INPUT_SIZE
    return {name: _artifact_for(name, encoders_dir, size, remake=input_size is not None) for name in wanted}


def trained_input_size(wanted: list[str], encoders_dir: Path) -> int | None:
    """The input size the trained artifacts among ``wanted`` share (None if none, or if they differ)."""
    sizes = {
        meta.input_size
        for name in wanted
        if (encoders_dir / name / META_FILE).is_file()
        and (meta := load_meta(encoders_dir / name)).kind != "baseline"
    }
    return sizes.pop() if len(sizes) == 1 else None


def size_mismatch(folders: dict[str, Path]) -> str | None:
    """One line when the artifacts of one ingest see different input sizes, with the way out."""
    sizes = {name: load_meta(folder).input_size for name, folder in folders.items()}
    if len(set(sizes.values())) < 2:
        return None
    listed = ", ".join(f"{name} {size} px" for name, size in sizes.items())
    trained = trained_input_size(list(folders), next(iter(folders.values())).parent)
    fix = f"--input-size {trained}" if trained else "--input-size N"
    return (
        f"warning: these encoders see different input sizes ({listed}), so their rows in "
        f"histocli evaluate differ by input size, not only by method; make the baselines match with {fix}"
    )


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


def _artifact_for(name: str, encoders_dir: Path, input_size: int, remake: bool = False) -> Path:
    folder = encoders_dir / name
    if (folder / META_FILE).is_file():
        meta = load_meta(folder)
        if remake and meta.kind == "baseline" and meta.input_size != input_size:
            return make_baseline_artifact(meta.method, folder, input_size=input_size)
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
