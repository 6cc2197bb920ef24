"""``histocli`` as a newcomer meets it, through CliRunner: numbers checked before anything runs,
help that reads whole, data sets named apart from their layouts, names checked before any progress
bar, and one line for every mistake."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from cli.main import app
from histo.data.synth import write_synthetic
from histo.encoders.baselines import make_baseline_artifact
from histo.settings import get_settings
from histo.store import SearchFilter, open_store

TILE = 64
runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=TILE)
    for name, value in {
        "HISTO_HOME": str(home),
        "HISTO_TILING__TILE_SIZE": str(TILE),
        "COLUMNS": "80",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HISTO_QDRANT__URL", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two folders of class sub-folders, as two labs would have them."""
    first = tmp_path / "MyData"
    write_synthetic("bach", first, slides=1, tiles_per_slide=4, seed=0, tile_size=TILE, class_folders=True)
    second = tmp_path / "other_lab"
    write_synthetic("bach", second, slides=1, tiles_per_slide=4, seed=1, tile_size=TILE, class_folders=True)
    return first, second


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


# ------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["train", "simclr", "--data", ".", "--layout", "folder", "--minutes", "-1"], "--minutes"),
        (["train", "simclr", "--data", ".", "--layout", "folder", "--minutes", "0"], "--minutes"),
        (["train", "simclr", "--data", ".", "--layout", "folder", "--steps", "0"], "--steps"),
        (["train", "simclr", "--data", ".", "--layout", "folder", "--epochs", "-3"], "--epochs"),
        (["train", "simclr", "--data", ".", "--layout", "folder", "--batch-size", "1"], "--batch-size"),
        (["train", "simclr", "--data", ".", "--layout", "folder", "--input-size", "8"], "--input-size"),
        (["ingest", ".", "--layout", "folder", "--tile-size", "0"], "--tile-size"),
        (["ingest", ".", "--layout", "folder", "--tile-size", "8"], "--tile-size"),
        (["ingest", ".", "--layout", "folder", "--stride", "0"], "--stride"),
        (["ingest", ".", "--layout", "folder", "--min-tissue", "1.5"], "--min-tissue"),
        (["ingest", ".", "--layout", "folder", "--target-mpp", "-0.5"], "--target-mpp"),
        (["ingest", ".", "--layout", "folder", "--mpp", "0"], "--mpp"),
        (["ingest", ".", "--layout", "folder", "--workers", "-1"], "--workers"),
        (["search", "q.png", "--mpp", "-1"], "--mpp"),
        (["search", "q.png", "-k", "0"], "--top-k"),
        (["search", "q.png", "--per-image", "0"], "--per-image"),
        (["heatmap", "q.png", "--slide", "s", "--size", "-5"], "--size"),
        (["serve", "--port", "-1"], "--port"),
        (["web", "--port", "70000"], "--port"),
        (["evaluate", "-d", "x", "--max-queries", "0"], "--max-queries"),
    ],
)
def test_a_nonsense_number_is_one_line_before_anything_runs(home: Path, args: list[str], option: str) -> None:
    code, output = run(*args)
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and option in errors[0] and "Traceback" not in output
    assert not (home / "index").exists() and not (home / "checkpoints").exists()  # nothing ran


def test_evaluate_cutoffs_must_be_positive(home: Path) -> None:
    code, output = run("evaluate", "-d", "x", "--cutoffs", "0,5")
    assert code == 1 and "give positive integers separated by commas" in output


# ------------------------------------------------------------------------------------------------
# Help
# ------------------------------------------------------------------------------------------------


def command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]

    def walk(group: click.Command, prefix: list[str]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            paths.append([*prefix, name])
            walk(command, [*prefix, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "histocli")
def test_help_reads_whole(home: Path, path: list[str]) -> None:
    code, output = run(*path, "--help")
    assert code == 0, output
    assert "<bool>" not in output  # a flag is a flag
    assert "..." not in output.replace("[ARGS]...", "").replace("COMMAND [ARGS]", "")  # no help cut
    assert all(len(line) <= 80 for line in output.splitlines()), output  # wrapped to the terminal


def test_help_of_groups_and_defaults_say_what_they_do(home: Path) -> None:
    index_help = run("index", "--help")[1]
    for command in ("stats", "mosaics", "prune", "drop", "snapshot", "restore", "migrate"):
        assert f"  {command} " in index_help
    assert "Without a command: list the registered methods" in run("encoders", "--help")[1]
    assert "--cutoffs" in run("evaluate", "--help")[1]
    search_help = " ".join(run("search", "--help")[1].split())
    assert "best available" not in search_help and "vectors for the filtered tiles" in search_help
    ingest_help = " ".join(run("ingest", "--help")[1].split())
    assert "none on 2 cores or fewer" in ingest_help


# ------------------------------------------------------------------------------------------------
# Names apart from layouts
# ------------------------------------------------------------------------------------------------


def ingest(folder: Path, *extra: str) -> tuple[int, str]:
    return run("ingest", str(folder), "-e", "colorhist", "--workers", "0", *extra)


def test_a_folder_gets_its_own_name_and_two_never_merge(home: Path, folders: tuple[Path, Path]) -> None:
    first, second = folders
    code, output = ingest(first, "--layout", "folder")
    assert code == 0, output
    assert ingest(second, "--layout", "folder")[0] == 0
    with open_store(path=home / "index") as store:
        assert set(store.count_values("dataset")) == {"mydata", "other_lab"}  # ./MyData -> mydata
        assert store.count_values("layout", SearchFilter("mydata")) == {
            "folder": store.count(SearchFilter("mydata"))
        }
    stats = json.loads(run("index", "stats", "--json")[1])
    assert stats["layouts"] == {"mydata": {"folder": 4}, "other_lab": {"folder": 4}}
    table = run("index", "stats")[1]
    assert "mydata" in table and "folder" in table and "made by artifact" in table


def test_a_name_for_my_data_and_the_old_spelling(home: Path, folders: tuple[Path, Path]) -> None:
    first, second = folders
    assert ingest(first, "--layout", "folder", "--name", "lab_a")[0] == 0
    code, output = ingest(second, "--layout", "folder", "--name", "lab_a")  # the same file names
    assert code == 1 and "4 files of" in output and "have the same paths as files of" in output
    assert "give this folder its own --name" in output
    extra = first.parent / "third"
    write_synthetic("crc", extra, slides=1, tiles_per_slide=3, seed=2, tile_size=TILE, class_folders=True)
    code, output = ingest(extra, "--layout", "folder", "--name", "lab_a")  # other names: it joins
    assert code == 0 and "note: data set lab_a already holds tiles of" in output and "own --name" in output
    assert ingest(second, "-d", "folder")[0] == 0  # the old spelling: -d LAYOUT
    with open_store(path=home / "index") as store:
        assert store.count_values("dataset") == {"lab_a": 4 + 3, "other_lab": 4}
    code, output = ingest(first, "-d", "mydata")
    assert code == 1 and "unknown layout 'mydata'" in output and "--layout folder --name mydata" in output
    code, output = ingest(first, "--layout", "folder", "--name", "my data!")
    assert code == 1 and "data set name 'my data!' is not allowed" in output
    code, output = ingest(first)
    assert code == 1 and "give the folder's layout: --layout" in output


def test_evaluate_sync_and_prune_work_per_name(home: Path, folders: tuple[Path, Path]) -> None:
    first, _ = folders
    assert ingest(first, "--layout", "folder", "--name", "lab_a")[0] == 0
    code, output = run("evaluate", "-d", "lab_a", "-e", "colorhist", "--cutoffs", "1")
    # one image per class: no query could ever find its class, and evaluate says so (no figures)
    assert code == 1 and "every class lies in a single image, slide or patient (" in output, output
    next(first.rglob("*.png")).unlink()
    code, output = ingest(first, "--layout", "folder", "--name", "lab_a", "--sync")
    assert code == 0 and "sync lab_a from" in output and "1 gone" in output, output
    code, output = run("index", "prune", "-d", "lab_a", "--dry-run")
    assert code == 0 and "0 gone from disk" in output


# ------------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------------


def test_unknown_names_are_checked_before_any_progress_bar(home: Path, folders: tuple[Path, Path]) -> None:
    first, _ = folders
    code, output = run("ingest", str(first), "--layout", "folder", "-e", "colorhsit")
    assert code == 1 and "did you mean 'colorhist'" in output
    assert "ingesting" not in output and "hashing" not in output
    assert ingest(first, "--layout", "folder")[0] == 0
    code, output = run("evaluate", "-d", "MyData")
    assert code == 1 and "did you mean 'mydata'" in output and "evaluating" not in output
    code, output = run("index", "mosaics", "-d", "nope", "-e", "colorhist")
    assert code == 1 and "no data set 'nope' in the index; it holds: mydata" in output


def test_a_server_address_needs_a_port_and_a_point_id_is_explained(
    home: Path, folders: tuple[Path, Path]
) -> None:
    code, output = run("search", "--id", "3f2c", "--server", "localhost")
    assert code == 1 and "'localhost' has no port; give HOST:PORT, e.g. localhost:50051" in output
    assert ingest(folders[0], "--layout", "folder")[0] == 0
    code, output = run("search", "--id", "not-a-uuid")
    assert code == 1 and "is not a UUID" in output and "copy one from the id column" in output
    assert "histo.data" not in output  # no Python API hint
    code, output = run("search", "--slides", "--slide-id", "nope")
    assert code == 1 and "the index holds no whole-slide images; ingest some" in output


def test_an_empty_result_explains_itself(home: Path, folders: tuple[Path, Path]) -> None:
    assert ingest(folders[0], "--layout", "folder")[0] == 0
    query = str(next(folders[0].rglob("*.png")))
    code, output = run("search", query, "-d", "mydata", "--label", "invasive")
    assert code == 1 and "labelled 'invasive' (did you mean 'Invasive'?)" in output
    code, output = run("search", query, "-d", "mydata", "--label", "Invasive", "-k", "3")
    assert code == 0 and "1 hits for" in output and "searched as 1 tile" in output  # one Invasive tile


def test_tables_wrap_instead_of_cutting_names(home: Path, folders: tuple[Path, Path]) -> None:
    assert ingest(folders[1], "--layout", "folder", "--name", "a_rather_long_data_set_name")[0] == 0
    query = str(next(folders[1].rglob("*.png")))
    for args in (["search", query, "-k", "3"], ["index", "stats"], ["encoders"]):
        code, output = run(*args)
        assert code == 0 and "…" not in output, output
    wide = runner.invoke(app, ["search", query, "-k", "3"], env={"COLUMNS": "200"}).output
    assert "a_rather_long_data_set_name" in wide  # whole where there is room, folded where not


def test_ctrl_c_is_one_line_and_exit_130(
    home: Path, folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import histo.ingest

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(histo.ingest, "ingest", interrupted)
    result = runner.invoke(app, ["ingest", str(folders[0]), "--layout", "folder", "-e", "colorhist"])
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"


def hints() -> list[tuple[str, str]]:
    """Every ``histocli ...`` command named in a message or help text of the code: (file, text)."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for folder in ("histo", "cli", "services", "workers"):
        for path in sorted((root / folder).rglob("*.py")):
            if "rpc" in path.parts:
                continue
            for match in re.finditer(
                r"histocli ((?:[a-z]+)(?: [^\"'`)\n;,]*)?)", path.read_text(encoding="utf-8")
            ):
                found.append((path.name, match.group(1)))
    return found


def test_every_hint_names_a_command_and_options_that_exist() -> None:
    """A hint that says ``histocli ingest DIR --layout L -e X`` must name a real command, with
    options it has (a renamed option would leave the user at a dead end)."""
    root = typer.main.get_command(app)
    checked = 0
    for where, text in hints():
        words = text.split()
        if words[0] not in getattr(root, "commands", {}):
            continue  # prose about histocli, not a command to run
        command: click.Command = root
        for word in words:
            sub = getattr(command, "commands", {}).get(word)
            if sub is None:
                break
            command = sub
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b", text):
            assert option in known or option == "--help", f"{where}: 'histocli {text}': no {option}"
        checked += 1
    assert checked >= 30
