"""The baseline registry: ``@baseline("name", measured=..., inputs=...)`` on a function
``(ctx: ScoreContext, **options) -> S[L, B]`` (zero-cost-nas style).

Adding a baseline is one decorated function in ``training_free.py`` or ``measured.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from benchmark.quantizers import quantizable_layers
from emq.scoring import ScoreContext


class UnknownBaselineError(ValueError):
    """A baseline name is not in the registry; the message lists the valid names."""


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Baseline:
    """A registered baseline proxy: ``baseline(ctx, **options)`` gives ``S[L, B]``.

    A ``Scorer`` (``emq.scoring.Scorer``): ``name``, ``measured``, ``inputs``, ``__call__``.

    ``measured``: costs forward passes of the quantized network (L x B of them);
    ``inputs``: names of the cached proxy inputs it reads (empty: it does not need them).
    """

    name: str
    fn: Callable[..., np.ndarray]
    measured: bool
    inputs: tuple[str, ...]
    doc: str
    # ``configs_fn(ctx, bit_index) -> scores [N]``: the baseline also scores whole
    # configurations (``configurations``); ``emq score`` then asks it instead of its table.
    configs_fn: Callable[..., np.ndarray] | None = None

    @property
    def needs_inputs(self) -> bool:
        return bool(self.inputs)

    @property
    def joint(self) -> bool:
        """Whether it scores whole configurations (``emq.scoring.configuration_scores``)."""
        return self.configs_fn is not None

    @property
    def combine(self) -> str:
        return "joint" if self.joint else "table"

    def configs(self, ctx: ScoreContext, bit_index: np.ndarray) -> np.ndarray:
        """Scores of configurations ``bit_index [N, L]`` (candidate indices) on ``ctx``."""
        if self.configs_fn is None:
            raise ValueError(f"baseline {self.name!r} scores per layer only")
        scores = np.asarray(self.configs_fn(ctx, np.asarray(bit_index)), dtype=np.float64)
        if scores.shape != (len(bit_index),):
            raise ValueError(f"baseline {self.name!r} returned {scores.shape} configuration scores")
        return scores

    @property
    def kind(self) -> str:
        return "measured" if self.measured else "training-free"

    def options(self) -> dict[str, Any]:
        """Keyword options of the baseline and their defaults."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p.default for p in params}

    def __call__(self, ctx: ScoreContext, **options: Any) -> np.ndarray:
        valid = self.options()
        bad = sorted(set(options) - set(valid))
        if bad:
            raise ValueError(
                f"baseline {self.name!r} has no option(s) {bad}; its options are "
                f"{sorted(valid) or 'none'}"
            )
        missing = sorted(set(self.inputs) - set(ctx.settings.names))
        if missing:
            raise ValueError(
                f"baseline {self.name!r} reads proxy input(s) {missing} that the context's "
                f"InputSettings.names {list(ctx.settings.names)} leave out"
            )
        table = np.asarray(self.fn(ctx, **options), dtype=np.float64)
        shape = (len(quantizable_layers(ctx.model)), len(ctx.candidates))
        if table.shape != shape:
            raise ValueError(
                f"baseline {self.name!r} returned a table of shape {table.shape}, "
                f"expected {shape} (layers, bit candidates)"
            )
        return table


BASELINES: dict[str, Baseline] = {}


def baseline(
    name: str, measured: bool = False, inputs: Sequence[str] = ()
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator registering ``fn(ctx, **options) -> S[L, B]`` under ``name``.

    The function's docstring (first line: paper and formula) becomes the baseline's doc.
    """
    if name in BASELINES:
        raise ValueError(f"baseline {name!r} is already registered")

    def decorator(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        doc = (fn.__doc__ or "").strip().splitlines()
        if not doc:
            raise ValueError(f"baseline {name!r} needs a docstring citing its paper and formula")
        BASELINES[name] = Baseline(name, fn, measured, tuple(inputs), doc[0])
        return fn

    return decorator


def configurations(name: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator giving the registered baseline ``name`` a configuration-level scorer
    ``fn(ctx, bit_index) -> scores [N]`` (higher = expected more accurate)."""

    def decorator(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        BASELINES[name] = replace(get_baseline(name), configs_fn=fn)
        return fn

    return decorator


def get_baseline(name: str) -> Baseline:
    """The registered baseline called ``name``; a clear error lists the valid names."""
    try:
        return BASELINES[name]
    except (KeyError, TypeError):
        raise UnknownBaselineError(
            f"unknown baseline {name!r}; valid baselines: {', '.join(BASELINES)}"
        ) from None
