"""Binding a bench to its model, calibration batch and cached proxy inputs."""

from __future__ import annotations

from pathlib import Path

from benchmark.bench import Bench
from benchmark.data import calibration_batch
from benchmark.factory import build_model
from emq.fitness import Evaluator
from primitives.inputs import INPUT_NAMES, InputSettings, LayerInputs, get_inputs


def bench_inputs(
    bench: Bench,
    calib_images: int = 128,
    calib_seed: int = 0,
    checkpoint: Path | str | None = None,
    cache: Path | str | None = None,
    names: tuple[str, ...] = INPUT_NAMES,
    dz_images: int | None = None,
) -> LayerInputs:
    """Proxy inputs (``names``) of the bench's model on the seeded calibration batch (cached).

    ``dz_images`` (more than ``calib_images``): ``Dz`` reads the first ``dz_images`` images
    of the same seed's calibration batch, the other inputs its first ``calib_images``
    (``primitives.inputs.compute_inputs``)."""
    model = build_model(bench.model, checkpoint)
    bench.check_model(model)
    x, y = calibration_batch(calib_images, calib_seed)
    dz_x = None
    if dz_images is not None and dz_images > calib_images and "Dz" in names:
        dz_x, _ = calibration_batch(dz_images, calib_seed)
    settings = InputSettings(
        candidates=bench.candidates, names=tuple(names), rounding=bench.rounding,
        adaround=bench.adaround,
    )  # fmt: skip
    return get_inputs(model, x, y, settings, cache, dz_x=dz_x)


def bench_evaluator(
    bench: Bench,
    calib_images: int = 128,
    calib_seed: int = 0,
    split_seed: int = 0,
    checkpoint: Path | str | None = None,
    cache: Path | str | None = None,
    names: tuple[str, ...] = INPUT_NAMES,
    dz_images: int | None = None,
    combine: str = "table",
    cross: float = 1.0,
) -> Evaluator:
    """An ``Evaluator`` for genomes against ``bench`` (proxies over the inputs ``names``;
    ``dz_images``: ``bench_inputs``; ``combine``, ``cross``: ``Evaluator``)."""
    inputs = bench_inputs(bench, calib_images, calib_seed, checkpoint, cache, names, dz_images)
    return Evaluator.from_bench(
        bench, inputs, inputs.path, split_seed, combine=combine, cross=cross
    )


def campaign_evaluator(
    bench: Bench, settings, checkpoint: Path | str | None = None, cache: Path | str | None = None
) -> Evaluator:
    """The evaluator a campaign of ``settings`` (``emq.evolve.CampaignSettings``) scores
    ``bench`` with: its calibration images and seed, split, inputs, ``Dz`` images and
    combination (and its cross-layer weight)."""
    return bench_evaluator(
        bench, settings.calib_images, settings.calib_seed, settings.split_seed, checkpoint,
        cache, names=settings.inputs, dz_images=settings.dz_images, combine=settings.combine,
        cross=settings.cross,
    )  # fmt: skip
