"""Seed formulas for ``emq evolve --init``: published proxies written as genomes.

Each is a sensitivity turned into a score (``revert``: higher = better) where needed; they
are the expressibility examples of ``tests/test_expressibility.py``.
"""

from __future__ import annotations

from pathlib import Path

LITERATURE = (
    "revert(abs(sum(mul(Ga, D))))",  # first-order Taylor: |sum dL/dA * (A_q - A)|
    "revert(mul(to_mean_scalar(H), sq_norm(E)))",  # HAWQ-V3 style: Hessian trace x error
    "mul(softmax(abslog(mul(V, b))), sqrt(relu(mul(W, b))))",  # EMQ's published proxy
)
BUILTIN = {"literature": LITERATURE}


def load_seeds(spec: str) -> tuple[str, ...]:
    """Formulas of a built-in seed set (``literature``) or of a file (one per line, ``#``
    comments)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"--init {spec}: no such file (one proxy formula per line) and not a built-in "
            f"seed set ({', '.join(BUILTIN)})"
        )
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return tuple(ln for ln in lines if ln and not ln.startswith("#"))
