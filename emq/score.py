"""Scoring bit configurations of any model with any Scorer (exported proxy or baseline)."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import nn

from benchmark.adaround import AdaRoundSettings
from benchmark.data import calibration_batch
from benchmark.models import MODELS, load_model, load_state
from emq.scoring import ScoreContext, bits_to_index, config_scores
from primitives.inputs import InputSettings


def build_model(spec: str, checkpoint: Path | str | None = None) -> nn.Module:
    """A zoo model by name, or ``module.path:factory`` (called with no arguments).

    A user model's ``checkpoint`` (a state_dict) is loaded with ``weights_only=True``.
    """
    if spec in MODELS:
        return load_model(spec, checkpoint)
    if ":" not in spec:
        raise ValueError(
            f"model {spec!r} is neither a zoo model ({', '.join(sorted(MODELS))}) "
            "nor an import path of the form module.path:factory"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's path
        raise ValueError(f"cannot import module {module_name!r} for --model: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"module {module_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_state(model, checkpoint)
    return model.eval()


def parse_int_list(text: str, option: str, example: str = "2,3,4,8") -> tuple[int, ...]:
    """``"2,3,4,8"`` -> ``(2, 3, 4, 8)``; a clear error naming ``option`` otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"{option} {text!r}: expected comma-separated integers, e.g. {example}")
    return values


def parse_configs(text: str, num_layers: int, candidates: tuple[int, ...]) -> np.ndarray:
    """Configurations from a file (one per line, or a JSON list of lists) or inline text
    ``"b1,b2,...;b1,b2,..."``; validated against the layer count and the candidates."""
    path = Path(text)
    if path.is_file():
        raw = path.read_text()
        if raw.lstrip().startswith("["):
            try:
                rows = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"config file {path} is not valid JSON: {exc}") from exc
        else:
            rows = [line.split(",") for line in raw.splitlines() if line.strip()]
    else:
        rows = [chunk.split(",") for chunk in text.split(";") if chunk.strip()]
    try:
        configs = [[int(str(b).strip()) for b in row] for row in rows]
    except ValueError as exc:
        raise ValueError(f"configurations must be integers separated by commas: {exc}") from exc
    if not configs:
        raise ValueError("no configuration given")
    for i, row in enumerate(configs):
        if len(row) != num_layers:
            raise ValueError(
                f"configuration {i + 1} has {len(row)} bit-widths but the model has "
                f"{num_layers} quantizable layers"
            )
    arr = np.asarray(configs, dtype=np.int64)
    bits_to_index(arr, candidates)  # clear error for bits outside the candidates
    return arr


def model_context(
    model: nn.Module,
    candidates: tuple[int, ...],
    batch: int = 128,
    seed: int = 0,
    cache: Path | str | None | bool = None,
    rounding: str = "nearest",
    adaround: AdaRoundSettings | None = None,
    names: tuple[str, ...] | None = None,
) -> ScoreContext:
    """Score context of a model on the seeded Fashion-MNIST calibration batch.

    ``rounding`` sets how ``Wq``/``E``/``D`` quantize the weights (nearest or AdaRound);
    ``names``: the proxy inputs to compute (default: all).
    """
    x, y = calibration_batch(batch, seed)
    settings = InputSettings(candidates=candidates, rounding=rounding, adaround=adaround)
    if names is not None:
        settings = replace(settings, names=tuple(names))
    return ScoreContext(model, x, y, settings, cache)


def score(scorer, ctx: ScoreContext, configs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score table of ``scorer`` and the scores of ``configs`` (bit-widths ``[N, L]``)."""
    table = np.asarray(scorer(ctx), dtype=np.float64)
    return table, config_scores(table, bits_to_index(configs, ctx.candidates))
