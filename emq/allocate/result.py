"""What an allocator returns, and the data it is judged on.

* ``Allocation``: per-layer ``(w, a)`` bits, relative BOPs (vs W8A8), allocation time and
  the number of quantized-network evaluations it cost.
* ``validation_split``: the images the accuracy-target search and the SMPQ accuracy value
  are measured on - ``n`` training images held back from the bench's calibration batch
  (the same seeded permutation as ``benchmark.data.calibration_batch(512, 0)``, positions
  ``512 .. 512 + n``), never test images.
* ``measure``: PTQ accuracy of an allocation with the bench's settings (``QuantSim``
  calibrated on ``calibration_batch(512, 0)``, evaluated on the full 10,000-image test set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch

from benchmark.data import load_split
from benchmark.ptq import QuantSim, relative_bops

CALIB_IMAGES = 512  # the bench's calibration batch (BenchSpec.calib_images)
CALIB_SEED = 0  # BenchSpec.calib_seed
VALIDATION_IMAGES = 2000


@dataclass
class Allocation:
    """Per-layer bits chosen by an allocator and what it cost to choose them."""

    method: str
    scorer: str
    layer_names: list[str]
    w_bits: list[int]
    a_bits: list[int]
    relative_bops: float
    seconds: float
    evaluations: int
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def make_allocation(
    method: str,
    scorer: str,
    layer_names: Sequence[str],
    macs: Sequence[int],
    w_bits: Sequence[int],
    a_bits: Sequence[int],
    seconds: float,
    evaluations: int,
    **details: object,
) -> Allocation:
    """An ``Allocation`` with its relative BOPs computed from ``macs``."""
    w, a = [int(b) for b in w_bits], [int(b) for b in a_bits]
    return Allocation(
        method, scorer, list(layer_names), w, a, relative_bops(macs, w, a), float(seconds),
        int(evaluations), dict(details),
    )  # fmt: skip


@lru_cache(maxsize=1)
def _train() -> tuple[torch.Tensor, torch.Tensor]:
    # normalized once per process: every subset below indexes the same tensors
    return load_split("train")


def training_subset(start: int, stop: int, seed: int = CALIB_SEED):
    """Positions ``start:stop`` of the seeded training permutation of ``calibration_batch``.

    ``training_subset(0, n, seed)`` equals ``benchmark.data.calibration_batch(n, seed)``.
    """
    x, y = _train()
    if not 0 <= start < stop <= len(x):
        raise ValueError(f"training subset {start}:{stop} outside 0..{len(x)}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[start:stop]
    return x[idx].clone(), y[idx].clone()


def validation_split(
    n: int = VALIDATION_IMAGES, calib_images: int = CALIB_IMAGES, seed: int = CALIB_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images disjoint from ``calibration_batch(calib_images, seed)``."""
    if n < 1:
        raise ValueError(f"validation size must be positive, got {n}")
    return training_subset(calib_images, calib_images + n, seed)


def measure(
    sim: QuantSim, x: torch.Tensor, y: torch.Tensor, w_bits: Sequence[int], a_bits: Sequence[int]
) -> float:
    """Top-1 (%) of a configuration on ``(x, y)``; the simulator is left in FP."""
    try:
        sim.set_config(list(w_bits), list(a_bits))
        return sim.evaluate(x, y)[0]
    finally:
        sim.set_fp()
