"""Keep Lightning's banners, tips and known-harmless warnings away from the user.

Inside :func:`quiet_training`, Lightning's loggers only pass errors ("GPU available: False",
"💡 Tip: …" and "LOCAL_RANK" lines are info), warnings known to be noise on small or CPU runs are
dropped, and any other warning is printed as one line, ``warning: <message>``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
_NOISE = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*`max_epochs` was not set.*",
    r".*predict_dataloader.*",
    r".*LeafSpec.*is deprecated.*",
    r".*treespec.*",
    r".*The given NumPy array is not writable.*",
    r".*isinstance.*LeafSpec.*",
    r".*Trying to infer the `batch_size`.*",
    r".*TensorBoard.*",
    r".*tensorboardX.*",
)


def _one_line(message: Any, category: type[Warning], *_: Any, **__: Any) -> str:
    first = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    return f"warning: {first}\n"


@contextmanager
def quiet_training() -> Iterator[None]:
    """Silence Lightning's chatter and noise warnings for the duration; restore everything after."""
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    previous_format = warnings.formatwarning
    with warnings.catch_warnings():
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.formatwarning = _one_line
        try:
            yield
        finally:
            warnings.formatwarning = previous_format
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            sys.stderr.flush()
