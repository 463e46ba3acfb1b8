"""OSP: operation sampling prioritization.

Static priors as in EMQ (``no_op`` twice as likely; cheap element-wise binaries favoured over
``matmul``), adapted during a campaign from each operation's observed rejection rate:
``weight = prior * (accepted + 1) / (tried + 2)``. With ``enabled=False`` every operation and
input is drawn uniformly (the ablation baseline).
"""

from __future__ import annotations

import random

from primitives.inputs import INPUT_NAMES
from primitives.operations import binary_ops, unary_ops

PRIORS = {
    "no_op": 2.0,
    "add": 1.5,
    "sub": 1.5,
    "mul": 1.5,
    "max": 0.75,
    "min": 0.75,
    "div": 0.75,
    "matmul": 0.25,
    "exp": 0.5,
    "exp2": 0.5,
    "invert": 0.5,
    "log": 0.5,
}
# Inputs: the bit-dependent ones carry the configuration, so they are favoured.
INPUT_PRIORS = {"Wq": 1.5, "E": 2.0, "D": 1.5, "b": 1.5}


class OperationSampler:
    """Weighted sampling of unary/binary operations and inputs; adapts to rejections."""

    def __init__(
        self, enabled: bool = True, adapt: bool = True, terminals: tuple[str, ...] = INPUT_NAMES
    ):
        self.enabled, self.adapt = enabled, adapt
        self.terminals = [n for n in INPUT_NAMES if n in set(terminals)]
        self.unary_names, self.binary_names = unary_ops(), binary_ops()
        self.tried = {name: 0 for name in self.unary_names + self.binary_names}
        self.accepted = dict(self.tried)

    def weight(self, name: str) -> float:
        if not self.enabled:
            return 1.0
        w = PRIORS.get(name, INPUT_PRIORS.get(name, 1.0))
        if self.adapt and name in self.tried:
            w *= (self.accepted[name] + 1) / (self.tried[name] + 2)
        return w

    def _draw(self, names: list[str], rng: random.Random) -> str:
        return rng.choices(names, weights=[self.weight(n) for n in names])[0]

    def unary(self, rng: random.Random) -> str:
        return self._draw(self.unary_names, rng)

    def binary(self, rng: random.Random) -> str:
        return self._draw(self.binary_names, rng)

    def terminal(self, rng: random.Random) -> str:
        return self._draw(self.terminals, rng)

    def record(self, ops: set[str], accepted: bool) -> None:
        """Count one screened genome for each operation it uses."""
        for name in ops:
            if name in self.tried:
                self.tried[name] += 1
                self.accepted[name] += int(accepted)

    def state(self) -> dict:
        return {"tried": dict(self.tried), "accepted": dict(self.accepted)}

    def load_state(self, state: dict) -> None:
        self.tried.update(state["tried"])
        self.accepted.update(state["accepted"])
