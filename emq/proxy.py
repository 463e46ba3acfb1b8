"""An evolved proxy as a Scorer, and its files: the JSON form and a campaign's ``best.json``.

Loading validates the document against its schema (``emq.schemas``), then every operation
and input name against the registry, and never ``eval``s file text. Writing (``.py``,
``.json``, formula) is ``emq.export``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emq import __version__
from emq.genome import from_names
from emq.graph import (
    Expr,
    canonical,
    check_cross,
    expr_str,
    joint_gram,
    joint_operand,
    joint_scores,
    leaves,
    prefix_names,
    score_table,
)
from emq.schemas import (
    BEST_SCHEMA,
    PROXY_FORMAT,
    PROXY_FORMAT_VERSION,
    PROXY_SCHEMA,
    check_document,
    read_document,
)
from emq.scoring import ScoreContext, config_scores
from primitives.inputs import INPUT_DOCS, INPUT_NAMES

# The proxy ``emq score`` and ``emq allocate`` use unless told otherwise ("default"): the
# best proxy of the reference campaign (runs/reference), shipped inside the package so it is
# found from any working directory.
DEFAULT_PROXY = Path(__file__).resolve().parent / "default_proxy.json"
FORMAT = PROXY_FORMAT
FORMAT_VERSION = PROXY_FORMAT_VERSION


COMBINES = ("table", "joint")


@dataclass(frozen=True)
class ProxyScorer:
    """An evolved proxy as a Scorer (``emq.scoring.Scorer``): ``scorer(ctx) -> S[l, b]``.

    ``combine``: how ``emq score`` combines the layers of a configuration - ``"table"``,
    the sum of the table's entries; ``"joint"``, the layers' terms added before the norm
    (``emq.graph.joint_scores``; only for a proxy ``revert(sq_norm(X))``), its cross-layer
    terms weighted by ``cross`` (1 in a document without the field, as before the field).
    The allocators take the table either way.
    """

    name: str
    expr: Expr
    measured: bool = False
    combine: str = "table"
    cross: float = 1.0

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, not {self.combine!r}")
        object.__setattr__(self, "cross", check_cross(self.cross))
        if self.combine == "joint":
            joint_operand(self.expr)  # a clear error for a proxy of another form

    @property
    def joint(self) -> bool:
        return self.combine == "joint"

    @property
    def formula(self) -> str:
        return expr_str(self.expr)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The proxy inputs its genome reads (its leaves), in ``INPUT_NAMES`` order."""
        used = set(leaves(self.expr))
        return tuple(n for n in INPUT_NAMES if n in used)

    def __call__(self, ctx: ScoreContext) -> np.ndarray:
        return score_table(self.expr, ctx.inputs)

    def configs(self, ctx: ScoreContext, bit_index: np.ndarray) -> np.ndarray:
        """Scores of configurations ``bit_index [N, L]`` on ``ctx``, combined as ``combine``
        says."""
        if self.joint:
            return joint_scores(self.expr, ctx.inputs, bit_index, self.cross)
        return config_scores(self(ctx), bit_index)

    def gram(self, ctx: ScoreContext) -> np.ndarray:
        """The joint combination's Gram ``G [L, B, L, B]`` on ``ctx`` (``emq.graph.joint_gram``;
        a joint proxy only)."""
        if not self.joint:
            raise ValueError(f"proxy {self.name} combines its layers as a table: it has no Gram")
        return joint_gram(self.expr, ctx.inputs)


def proxy_document(expr: Expr, **extra) -> dict:
    """The JSON form of a proxy."""
    names = prefix_names(expr)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "formula": expr_str(expr),
        "genome": names,
        "inputs": sorted({n for n in names if n in INPUT_DOCS}),
        **extra,
    }


def load_proxy_document(doc: dict, source: str = "proxy") -> ProxyScorer:
    """Validate a JSON document (``emq.schemas.PROXY_SCHEMA``, then every name against the
    registry) and build its scorer (clear errors, no eval)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{source} is not an EMQ proxy file (missing format '{FORMAT}')")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{source} has proxy format version {doc.get('format_version')!r}, "
            f"this EMQ reads version {FORMAT_VERSION}"
        )
    check_document(doc, PROXY_SCHEMA, source)
    try:
        tree = from_names(doc["genome"])
    except ValueError as exc:
        raise type(exc)(f"{source}: field 'genome': {exc}") from None
    try:
        return ProxyScorer(
            str(doc.get("name", source)), canonical(tree), combine=doc.get("combine", "table"),
            cross=doc.get("cross", 1.0),
        )  # fmt: skip
    except ValueError as exc:
        field = "cross" if "cross-layer" in str(exc) else "combine"
        raise ValueError(f"{source}: field '{field}': {exc}") from None


def _read_best(path: Path, doc: dict | None = None) -> dict:
    """A campaign's ``best.json``, validated (``emq.schemas.BEST_SCHEMA``, then its genome
    against the registry)."""
    if doc is None:
        doc = read_document(path, BEST_SCHEMA, "best proxy file")
    else:
        check_document(doc, BEST_SCHEMA, f"best proxy file {path}")
    try:
        from_names(doc["genome_names"])
    except ValueError as exc:
        raise type(exc)(f"best proxy file {path}: field 'genome_names': {exc}") from None
    return doc


def read_best(run: Path) -> dict:
    """A run folder's validated ``best.json`` (a clear error if it has none)."""
    best = run / "best.json"
    if not best.exists() and not best.is_symlink():
        raise ValueError(f"{run} has no best.json: run 'emq evolve --run {run}' first")
    return _read_best(best)


def best_proxy(path: Path, doc: dict | None = None) -> ProxyScorer:
    """The proxy of a campaign's ``best.json`` (its canonical genome is under genome_names)."""
    info = _read_best(path, doc)
    proxy = {"format": FORMAT, "format_version": FORMAT_VERSION, "genome": info["genome_names"],
             "combine": info.get("combine", "table"), "cross": info.get("cross", 1.0)}  # fmt: skip
    return load_proxy_document(proxy, f"best proxy file {path}")
