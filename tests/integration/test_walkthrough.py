"""The README's "Your own data" walkthrough, run command by command as written, in an empty folder.

Each ``histocli`` line of the section's code block runs as its own process (the real entry point,
``HISTO_HOME`` left at its default ``./.histo``). A line whose comment says ``# refused: TEXT`` must
exit 1 with TEXT in its one-line error; every other line must succeed. At the end every vector of
the retrained encoder comes from its new artifact: the retrain scenario ends without a mix.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from histo.encoders.artifact import artifact_digest
from histo.store import open_store
from histo.store.base import stamp_field

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> list[tuple[str, str | None]]:
    """(command, refusal text or None) for every histocli line of the "Your own data" block."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Your own data\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the walkthrough's code block is missing from the README"
    steps = []
    for line in block.group(1).splitlines():
        if not line.startswith("histocli "):
            continue
        command, _, comment = line.partition("  # ")
        refused = (
            comment.strip().removeprefix("refused:").strip()
            if comment.strip().startswith("refused:")
            else None
        )
        steps.append((command.strip(), refused))
    return steps


def histocli() -> list[str]:
    found = shutil.which("histocli", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "cli"]


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    steps = walkthrough()
    assert len(steps) >= 10 and sum(refused is not None for _, refused in steps) >= 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env |= {"COLUMNS": "300", "PYTHONWARNINGS": "ignore"}
    for command, refused in steps:
        args = shlex.split(command)
        done = subprocess.run(
            histocli() + args[1:], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        said = done.stdout + done.stderr
        if refused is None:
            assert done.returncode == 0, f"{command}\n{said}"
            if args[1] == "train":  # how long and why, and what to run next
                assert (
                    "optimiser steps (--steps as given" in done.stdout
                    and "next: histocli ingest" in done.stdout
                )
        else:
            assert done.returncode == 1, f"{command} was not refused\n{said}"
            assert refused in said and "Traceback" not in said, f"{command}\n{said}"
            assert len(done.stderr.strip().splitlines()) == 1, f"{command}: not one line\n{done.stderr}"
    home = tmp_path / ".histo"
    digest = artifact_digest(home / "encoders" / "simclr_mine")
    with open_store(path=home / "index") as store:
        made_by = store.count_values(stamp_field("simclr_mine"))
        assert made_by == {digest: store.count(vector="simclr_mine")}  # every vector, none of the old
        assert set(store.count_values("dataset")) == {"mydata"}
