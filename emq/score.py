"""Scoring bit configurations of any model with any Scorer (exported proxy or baseline)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import nn

from benchmark.adaround import AdaRoundSettings
from benchmark.data import calibration_batch
from benchmark.schemas import existing_path, parse_json, read_text
from emq.schemas import CONFIGS_SCHEMA, check_document
from emq.scoring import (
    SCORING_IMAGES,
    ScoreContext,
    bits_to_index,
    config_scores,
    configuration_scores,
    score_table,
)
from primitives.inputs import InputSettings


def parse_int_list(text: str, option: str, example: str = "2,3,4,8") -> tuple[int, ...]:
    """``"2,3,4,8"`` -> ``(2, 3, 4, 8)``; a clear error naming ``option`` otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"{option} {shown!r}: expected comma-separated integers, e.g. {example}")
    return values


MAX_CONFIGS = 1_000_000


def parse_configs(text: str, num_layers: int, candidates: tuple[int, ...]) -> np.ndarray:
    """Configurations from a file (one per line, or a JSON list of lists) or inline text
    ``"b1,b2,...;b1,b2,..."``; validated against the layer count and the candidates.

    ``text`` is a file only if such a file exists (inline text of any length is safe).
    """
    path = existing_path(text)
    if path is not None:
        raw = read_text(path, "config file")
        if raw.lstrip().startswith("["):
            rows = check_document(
                parse_json(raw, f"config file {path}"), CONFIGS_SCHEMA, f"config file {path}"
            )
        else:
            rows = [line.split(",") for line in raw.splitlines() if line.strip()]
    else:
        rows = [chunk.split(",") for chunk in text.split(";") if chunk.strip()]
    if len(rows) > MAX_CONFIGS:
        raise ValueError(f"{len(rows)} configurations given; at most {MAX_CONFIGS:,} at once")
    try:
        configs = [[int(str(b).strip()) for b in row] for row in rows]
    except ValueError as exc:
        if path is None and not re.fullmatch(r"[\d\s,;+-]*", text):
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise ValueError(
                f"--configs {shown!r} is neither an existing file nor inline configurations "
                "'b1,b2,...[;b1,b2,...]'"
            ) from None
        raise ValueError(f"configurations must be integers separated by commas: {exc}") from exc
    if not configs:
        raise ValueError("no configuration given")
    for i, row in enumerate(configs):
        if len(row) != num_layers:
            raise ValueError(
                f"configuration {i + 1} has {len(row)} bit-widths but the model has "
                f"{num_layers} quantizable layers"
            )
    bad = sorted({b for row in configs for b in row} - {int(c) for c in candidates})
    if bad:
        raise ValueError(f"bit-width(s) {bad[:10]} not among the candidates {list(candidates)}")
    return np.asarray(configs, dtype=np.int64)


def model_context(
    model: nn.Module,
    candidates: tuple[int, ...],
    batch: int = SCORING_IMAGES,
    seed: int = 0,
    cache: Path | str | None | bool = None,
    rounding: str = "nearest",
    adaround: AdaRoundSettings | None = None,
    names: tuple[str, ...] | None = None,
) -> ScoreContext:
    """Score context of a model on the seeded Fashion-MNIST calibration batch (``batch``
    images; its first 128 are the 128-image batch of the same seed).

    ``rounding`` sets how ``Wq``/``E``/``D`` quantize the weights (nearest or AdaRound);
    ``names``: the proxy inputs to compute (default: all).
    """
    x, y = calibration_batch(batch, seed)
    settings = InputSettings(candidates=candidates, rounding=rounding, adaround=adaround)
    if names is not None:
        settings = replace(settings, names=tuple(names))
    return ScoreContext(model, x, y, settings, cache)


def score(scorer, ctx: ScoreContext, configs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score table of ``scorer`` (``score_table``: averaged over calibration chunks) and
    the scores of ``configs`` (bit-widths ``[N, L]``)."""
    table = score_table(scorer, ctx)
    return table, config_scores(table, bits_to_index(configs, ctx.candidates))


def score_configs(scorer, ctx: ScoreContext, configs: np.ndarray) -> np.ndarray:
    """Scores of ``configs`` (bit-widths ``[N, L]``) as the scorer combines layers
    (``configuration_scores``: a joint proxy adds its layers' terms, any other sums its
    table), averaged over calibration chunks."""
    return configuration_scores(scorer, ctx, bits_to_index(configs, ctx.candidates))
