"""Real H&E images that ship with histo (licences in ``samples/LICENSES.md``).

Laid out as ``<tissue>/<file>`` so the ``folder`` adapter reads them like any user folder.
"""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).parent / "samples"
#: A real whole-slide image (Aperio SVS, CC0; ``wsi_samples/LICENSES.md``).
WSI_SAMPLE = Path(__file__).parent / "wsi_samples" / "cmu_small_region.svs"


def sample_dir() -> Path:
    """The folder of shipped real samples."""
    return SAMPLES_DIR


def sample_paths() -> list[Path]:
    """Every shipped sample image, sorted."""
    return sorted(p for p in SAMPLES_DIR.glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
