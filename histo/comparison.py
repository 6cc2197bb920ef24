"""What a comparison of encoders may claim: the conditions of each row, intervals, paired verdicts.

A row's figure depends on more than its method: input size, the µm per pixel the encoder sees,
normalisation and orientation pooling each move retrieval by as much as an SSL method gains
(``benchmarks/results/input_conditions.md``). So every row states them, and a comparison whose
rows differ in any says so in one line.

Rows are not ranked by their highest number. Each compared row gets a 95 % cluster-bootstrap
interval per metric, and a paired verdict against the **reference**: the best baseline in the
comparison (``random``, ``colorhist``, ``imagenet``, …), or the highest row when there is none
(then the verdicts say which rows are distinguishable from the top).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histo.encoders.artifact import META_FILE, ArtifactMeta, load_meta
from histo.encoders.backbones import EFFICIENTNET_MEAN, EFFICIENTNET_STD
from histo.encoders.registry import names
from histo.encoders.transforms import IMAGENET_MEAN, IMAGENET_STD
from histo.evaluation import EncoderResult
from histo.uncertainty import ROUNDS, Interval, Paired, group_weights, interval, paired


@dataclass(frozen=True)
class Conditions:
    """What a row's encoder saw: pixels, µm per pixel, normalisation, pooling, training steps."""

    input_size: int | None = None
    mpp_seen: float | None = None
    normalisation: str = "unknown"
    pooling: int | None = None
    steps: int | None = None
    baseline: bool = False
    architecture: str = ""

    def cells(self) -> list[str]:
        return [
            f"{self.input_size} px" if self.input_size else "unknown",
            f"{self.mpp_seen:.2f}" if self.mpp_seen else "unknown",
            self.normalisation,
            {None: "unknown", 1: "none"}.get(self.pooling, f"{self.pooling} rotations"),
            "baseline" if self.baseline else str(self.steps) if self.steps else "unknown",
        ]

    def as_dict(self) -> dict[str, Any]:
        keys = ("input", "µm/px seen", "normalisation", "orientation pooling", "training steps")
        return dict(zip(keys, self.cells(), strict=True))


CONDITION_COLUMNS = [
    "encoder",
    "input",
    "µm/px seen",
    "normalisation",
    "orientation pooling",
    "training steps",
]


def normalisation_name(mean: list[float], std: list[float]) -> str:
    """A person's name for an artifact's input normalisation."""
    known = {
        "(x-127)/128": (EFFICIENTNET_MEAN, EFFICIENTNET_STD),
        "ImageNet mean/std": (IMAGENET_MEAN, IMAGENET_STD),
        "none": ([0.0] * 3, [1.0] * 3),
    }
    for name, (m, s) in known.items():
        if np.allclose(mean, m, atol=1e-4) and np.allclose(std, s, atol=1e-4):
            return name
    return "mean " + "/".join(f"{v:.3f}" for v in mean) + ", std " + "/".join(f"{v:.3f}" for v in std)


def conditions_of(meta: ArtifactMeta | None, result: EncoderResult) -> Conditions:
    """A row's conditions from its artifact (where this machine has it) and its tiles' payloads."""
    if meta is None:
        return Conditions()
    steps = meta.training.get("steps") if meta.training else None
    return Conditions(
        meta.input_size,
        _mpp_seen(result, meta.input_size),
        normalisation_name(meta.mean, meta.std),
        meta.orientation_pooling,
        int(steps) if steps else None,
        meta.kind == "baseline",
        meta.architecture,
    )


def _mpp_seen(result: EncoderResult, input_size: int) -> float | None:
    """Median µm per encoder-input pixel over the tiles: source µm/px x box width / input size."""
    if result.tiles is None:
        return None
    seen = [
        float(p["mpp"]) * float(p.get("w") or p.get("tile_size") or input_size) / input_size
        for p in result.tiles.payloads
        if p.get("mpp")
    ]
    return float(np.median(seen)) if seen else None


def row_conditions(results: dict[str, EncoderResult], encoders_dir: Path) -> dict[str, Conditions]:
    """Every row's conditions (fused rows and rows without an artifact here: unknown)."""
    out = {}
    for name, result in results.items():
        folder = encoders_dir / name
        meta = load_meta(folder) if (folder / META_FILE).is_file() else None
        out[name] = conditions_of(meta, result)
    return out


def mismatch(conditions: dict[str, Conditions]) -> str | None:
    """One line naming the conditions the rows differ in, or None. Input size and µm/px are compared
    across the networks; normalisation and pooling among rows of one architecture (a colour
    histogram has neither, a random ResNet is not fed like EfficientNet); steps among trained rows."""
    networks = {
        n: c for n, c in conditions.items() if c.input_size is not None and c.architecture != "colorhist"
    }
    parts = [_differ(label, networks, index) for label, index in (("input size", 0), ("µm/px seen", 1))]
    for architecture in sorted({c.architecture for c in networks.values()}):
        same = {n: c for n, c in networks.items() if c.architecture == architecture}
        parts += [
            _differ(label, same, index) for label, index in (("normalisation", 2), ("orientation pooling", 3))
        ]
    parts.append(_differ("training steps", {n: c for n, c in networks.items() if not c.baseline}, 4))
    found = [p for p in dict.fromkeys(parts) if p]
    if not found:
        return None
    fix = (
        " (ingest --input-size N makes the baselines at the encoders' size)"
        if found[0].startswith("input")
        else ""
    )
    return (
        "warning: the rows differ in " + "; ".join(found) + ": part of their differences comes from "
        f"these conditions, not the method{fix}"
    )


def _differ(label: str, rows: dict[str, Conditions], index: int) -> str:
    values = {name: c.cells()[index] for name, c in rows.items()}
    if len(set(values.values())) < 2:
        return ""
    return f"{label} ({', '.join(f'{n} {v}' for n, v in values.items())})"


@dataclass
class Verdicts:
    """Intervals of every row and the paired verdict of every compared row against the reference."""

    reference: str
    reference_is_baseline: bool
    metrics: list[str]
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)
    paired: dict[str, dict[str, Paired]] = field(default_factory=dict)

    def verdict(self, name: str, metric: str) -> str:
        if name == self.reference:
            return "reference"
        found = self.paired.get(name, {}).get(metric)
        return found.verdict if found else "not compared (other queries)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "reference_is_baseline": self.reference_is_baseline,
            "intervals": {n: {m: i.as_dict() for m, i in row.items()} for n, row in self.intervals.items()},
            "paired": {n: {m: p.as_dict() for m, p in row.items()} for n, row in self.paired.items()},
        }


def is_baseline(name: str, conditions: Conditions | None) -> bool:
    return bool(conditions and conditions.baseline) or name in names(kind="baseline")


def compare(
    results: dict[str, EncoderResult],
    metrics: list[str],
    main: str,
    conditions: dict[str, Conditions] | None = None,
    rounds: int = ROUNDS,
    seed: int = 0,
) -> Verdicts:
    """Intervals for every row; paired verdicts of the compared rows against the reference (the
    best baseline by ``main``)."""
    compared = [n for n, r in results.items() if not r.partial and r.plan is not None]
    baselines = [n for n in compared if is_baseline(n, (conditions or {}).get(n))]
    pool = baselines or compared
    reference = max(pool, key=lambda n: results[n].summary["overall"][main]) if pool else next(iter(results))
    verdicts = Verdicts(reference, bool(baselines), metrics)
    for name, result in results.items():
        if result.plan is None or not result.values:
            continue
        weights = group_weights(result.plan.units, rounds, seed)
        classes = result.plan.labels
        verdicts.intervals[name] = {m: interval(result.values[m], classes, weights) for m in metrics}
        if name in compared and name != reference:
            ref = results[reference].values
            verdicts.paired[name] = {m: paired(result.values[m], ref[m], classes, weights) for m in metrics}
    return verdicts


__all__ = [
    "CONDITION_COLUMNS",
    "Conditions",
    "Verdicts",
    "compare",
    "conditions_of",
    "mismatch",
    "normalisation_name",
    "row_conditions",
]
