"""The one way histo reads a PyTorch file: ``weights_only=True``, an explicit allow-list, one-line errors.

``torch.load`` without ``weights_only`` runs whatever a pickle names; with it, anything beyond
tensors and plain containers is refused, and torch's page-long reason becomes one line that names
the offending global and says what to do.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from histo.errors import InvalidInputError


def load_tensors(path: Path, what: str, advice: str, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load`` of ``path`` (a ``what``, e.g. "checkpoint") on the CPU, or InvalidInputError."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise InvalidInputError(f"{path}: not a PyTorch {what} ({_first_line(exc)}); {advice}") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        hint = f" (it contains {found.group(1)})" if found else ""
        raise InvalidInputError(
            f"{path}: refused to load: it holds objects outside the allow-list, and histo refused to "
            f"unpickle them{hint}; {advice}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a PyTorch {what} ({_first_line(exc)}); {advice}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:100]
