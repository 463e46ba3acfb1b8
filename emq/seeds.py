"""Seed formulas for ``emq evolve --init``: published proxies written as genomes.

Each is a sensitivity turned into a score (``revert``: higher = better) where needed; they
are the expressibility examples of ``tests/test_expressibility.py``. A campaign starts from
the ``literature`` set by default (those whose inputs the campaign may use); ``--init none``
starts from random genomes only.
"""

from __future__ import annotations

from collections.abc import Iterable

from benchmark.schemas import existing_path, read_text
from emq.genome import from_string
from emq.graph import canonical, leaves

# the empirical Fisher of the output, the default proxy until 2026-12-07 (kept as a seed and
# as the studies' reference)
EMPIRICAL_FISHER = "revert(sq_norm(sample_sum(mul(Ga, D))))"

LITERATURE = (
    "revert(sum(abs(mul(Ga, D))))",  # first-order Taylor, per element: sum |dL/dA * (A_q - A)|
    "revert(abs(sum(mul(Ga, D))))",  # first-order Taylor, signed: |sum dL/dA * (A_q - A)|
    # output-space Fisher (AutoQuantize, FIT): sum_n (sum_i dL/dA * (A_q - A))^2 per sample
    EMPIRICAL_FISHER,
    "revert(sum(abs(sample_sum(mul(Ga, D)))))",  # sum_n |first-order loss change of sample n|
    # the true (Gauss-Newton) Fisher of the output: sum_n of the output KL to second order
    "revert(sq_norm(Dz))",
    "revert(sq_norm(D))",  # layer output MSE (the error layer-wise PTQ reconstruction minimizes)
    "revert(sq_norm(E))",  # weight quantization MSE
    "revert(mul(to_mean_scalar(H), sq_norm(E)))",  # HAWQ-V3 style: Hessian trace x error
    "mul(softmax(abslog(mul(V, b))), sqrt(relu(mul(W, b))))",  # EMQ's published proxy
)
BUILTIN = {"literature": LITERATURE, "none": ()}


def inputs_of(formula: str) -> set[str]:
    """The proxy inputs a formula reads."""
    return leaves(canonical(from_string(formula)))


def fitting(seeds: Iterable[str], inputs: Iterable[str]) -> tuple[str, ...]:
    """The seeds that use only ``inputs`` (a built-in set adapts to ``--inputs``)."""
    allowed = set(inputs)
    return tuple(s for s in seeds if inputs_of(s) <= allowed)


def load_seeds(spec: str, inputs: Iterable[str] | None = None) -> tuple[str, ...]:
    """Formulas of a built-in seed set (``literature``, ``none``) or of a file (one per line,
    ``#`` comments). A built-in set keeps only the seeds that fit ``inputs`` (when given);
    a file's formulas are all kept, and one outside ``inputs`` (when given) is an error."""
    if spec in BUILTIN:
        return BUILTIN[spec] if inputs is None else fitting(BUILTIN[spec], inputs)
    path = existing_path(spec)
    if path is None or not path.is_file():
        shown = spec if len(spec) <= 80 else spec[:77] + "..."
        raise ValueError(
            f"--init {shown}: no such file (one proxy formula per line) and not a built-in "
            f"seed set ({', '.join(BUILTIN)})"
        )
    raw = read_text(path, "--init file")
    lines = [ln.strip() for ln in raw.splitlines()]
    formulas = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    if not formulas:
        raise ValueError(f"--init file {path} holds no formula (one per line, '#' starts a "
                         "comment); use --init none to start from random genomes only")  # fmt: skip
    allowed = None if inputs is None else set(inputs)
    for i, text in enumerate(formulas):
        try:
            outside = sorted(inputs_of(text) - (allowed or set()))
        except ValueError as exc:
            raise ValueError(f"--init file {path}, formula {i + 1}: {exc}") from None
        if allowed is not None and outside:
            raise ValueError(f"--init file {path}, formula {i + 1} '{text}' uses "
                             f"{', '.join(outside)}, outside --inputs {','.join(inputs)}; "
                             "remove it or add the input to --inputs")  # fmt: skip
    return formulas
