"""Proxy graphs: canonical form (networkx DAG), static shapes, evaluation, score tables.

A genome is turned into a canonical expression - nested tuples ``(op, child, ...)`` with
input names as leaves - by folding ``no_op``, idempotent pairs (``abs(abs(x))``), involutions
(``revert(revert(x))``) and sorting the operands of commutative operations. Equal
subexpressions are merged into one node of a networkx DAG, whose Weisfeiler-Lehman hash
identifies equivalent genomes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from deap import gp

from benchmark.cluster import libc
from emq.scoring import reduce_to_bits
from primitives.inputs import BIT_DEPENDENT, LayerInputs
from primitives.operations import OPS

Expr = str | tuple  # an input name, or (op_name, *children)


def _tree_to_expr(tree: gp.PrimitiveTree, start: int = 0) -> tuple[Expr, int]:
    node = tree[start]
    if node.arity == 0:
        return node.value, start + 1
    children, i = [], start + 1
    for _ in range(node.arity):
        child, i = _tree_to_expr(tree, i)
        children.append(child)
    return (node.name, *children), i


def _simplify(name: str, children: list[Expr]) -> Expr:
    op = OPS[name]
    if name == "no_op":
        return children[0]
    if op.arity == 1:
        (c,) = children
        if isinstance(c, tuple) and c[0] == name:
            if op.idempotent:
                return c
            if op.involution:
                return c[1]
        return (name, c)
    if op.commutative:
        children = sorted(children, key=expr_str)
    if op.idempotent and expr_str(children[0]) == expr_str(children[1]):
        return children[0]
    return (name, *children)


def _canon(expr: Expr) -> Expr:
    if isinstance(expr, str):
        return expr
    return _simplify(expr[0], [_canon(c) for c in expr[1:]])


def canonical(tree: gp.PrimitiveTree) -> Expr:
    """Canonical expression of a genome (equivalent genomes give equal expressions)."""
    return _canon(_tree_to_expr(tree)[0])


def expr_str(expr: Expr) -> str:
    """Readable formula, e.g. ``mul(sqrt(W), b)``."""
    if isinstance(expr, str):
        return expr
    return f"{expr[0]}({', '.join(expr_str(c) for c in expr[1:])})"


def to_dag(expr: Expr) -> nx.DiGraph:
    """The expression as a DAG (edges parent -> operand), common subexpressions merged."""
    g = nx.DiGraph()

    def add(e: Expr) -> str:
        key = expr_str(e)
        if key in g:
            return key
        if isinstance(e, str):
            g.add_node(key, label=e)
            return key
        g.add_node(key, label=e[0])
        commutative = OPS[e[0]].commutative
        for pos, child in enumerate(e[1:]):
            g.add_edge(key, add(child), pos=str(0 if commutative else pos))
        return key

    root = add(expr)
    g.nodes[root]["label"] = "root:" + g.nodes[root]["label"]
    g.graph["root"] = root
    return g


def dag_hash(expr: Expr) -> str:
    """Weisfeiler-Lehman hash of the canonical DAG (iterations = its depth + 1)."""
    g = to_dag(expr)
    depth = nx.dag_longest_path_length(g) + 1 if g.number_of_edges() else 1
    with warnings.catch_warnings():  # networkx notes its directed-graph hashes changed in 3.5
        warnings.simplefilter("ignore", UserWarning)
        return nx.weisfeiler_lehman_graph_hash(
            g, node_attr="label", edge_attr="pos", iterations=depth, digest_size=16
        )


def prefix_names(expr: Expr) -> list[str]:
    """The expression as a prefix list of names (the JSON form of a genome)."""
    if isinstance(expr, str):
        return [expr]
    return [expr[0], *(n for c in expr[1:] for n in prefix_names(c))]


def leaves(expr: Expr) -> set[str]:
    """Input names the expression reads."""
    if isinstance(expr, str):
        return {expr}
    return set().union(*(leaves(c) for c in expr[1:]))


def ops_used(expr: Expr) -> set[str]:
    """Operation names in the expression."""
    if isinstance(expr, str):
        return set()
    return {expr[0]}.union(*(ops_used(c) for c in expr[1:]))


def depends_on_bits(expr: Expr) -> bool:
    """Whether the output can change with the bit-width (reads a bit-dependent input)."""
    return bool(leaves(expr) & BIT_DEPENDENT)


def infer_shape(expr: Expr, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Output shape from the declared shape rules only (raises ``ShapeError``)."""
    memo: dict[str, tuple[int, ...]] = {}

    def walk(e: Expr) -> tuple[int, ...]:
        if isinstance(e, str):
            if e not in shapes:
                raise KeyError(f"input {e!r} was not computed (have {sorted(shapes)})")
            return shapes[e]
        key = expr_str(e)
        if key not in memo:
            memo[key] = OPS[e[0]].output_shape(*(walk(c) for c in e[1:]))
        return memo[key]

    return walk(expr)


# Largest subexpression result (elements) kept in a ``SubexpressionCache``: reductions, not
# whole activations, so the cache stays small while the costly part (a product over ``D``
# reduced per sample, say) is computed once per layer for every genome that contains it.
CACHE_MAX_ELEMENTS = 1 << 14


class SubexpressionCache:
    """Small subexpression results per (layer, canonical text), shared across genomes.

    A campaign's genomes share subtrees (crossover copies them); a reduction such as
    ``sample_sum(mul(Ga, D))`` is then evaluated once per layer, not once per genome. Only
    results of at most ``CACHE_MAX_ELEMENTS`` elements are kept, ``max_bytes`` in all (then
    the cache starts afresh). Values are exactly those a fresh evaluation gives.
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes, self.nbytes = max_bytes, 0
        self.entries: dict[tuple[int, str], torch.Tensor] = {}

    def get(self, layer: int, key: str) -> torch.Tensor | None:
        return self.entries.get((layer, key))

    def put(self, layer: int, key: str, value: torch.Tensor) -> None:
        if value.numel() > CACHE_MAX_ELEMENTS:
            return
        size = value.numel() * value.element_size()
        if self.nbytes + size > self.max_bytes:
            self.entries.clear()
            self.nbytes = 0
        self.entries[(layer, key)] = value
        self.nbytes += size


def evaluate(
    expr: Expr,
    tensors: dict[str, torch.Tensor],
    cache: SubexpressionCache | None = None,
    layer: int = 0,
) -> torch.Tensor:
    """Evaluate on one layer's inputs, each distinct subexpression once (and, with a
    ``cache``, small results reused across calls for the same ``layer``).

    An intermediate result is held only until its last use, so the peak memory is the
    live working set of the graph, not the sum of all its nodes (a chain of products over
    ``D`` on a large layer is several hundred MB per node).
    """
    uses: dict[str, int] = {}

    def count(e: Expr) -> None:
        if isinstance(e, str):
            return
        key = expr_str(e)
        uses[key] = uses.get(key, 0) + 1
        if uses[key] == 1:
            for c in e[1:]:
                count(c)

    count(expr)
    memo: dict[str, torch.Tensor] = {}

    def walk(e: Expr) -> torch.Tensor:
        if isinstance(e, str):
            return tensors[e]
        key = expr_str(e)
        value = memo.get(key)
        if value is None:
            value = cache.get(layer, key) if cache is not None else None
            if value is None:
                value = OPS[e[0]].fn(*(walk(c) for c in e[1:]))
                if cache is not None:
                    cache.put(layer, key, value)
        uses[key] -= 1
        if uses[key] > 0:
            memo[key] = value
        else:
            memo.pop(key, None)
        return value

    try:
        with torch.no_grad():
            return walk(expr)
    finally:
        memo.clear()  # ``walk`` is a closure cycle: never let it hold tensors until a GC


def score_table(
    expr: Expr,
    inputs: LayerInputs,
    layers: Sequence[int] | None = None,
    cache: SubexpressionCache | None = None,
) -> np.ndarray:
    """``S[l, b]``: the graph evaluated once per layer on all bit options at once, in
    float64 (``as_float64``); ``cache`` reuses small subexpression results across calls."""
    idx = range(inputs.num_layers) if layers is None else layers
    nbits = len(inputs.candidates)
    names = leaves(expr)
    rows = []
    for i in idx:
        # Inputs are cast on first access: a genome found in the cache touches none.
        lazy = _LazyFloat64(inputs.tensors[i], names)
        rows.append(reduce_to_bits(evaluate(expr, lazy, cache, i), nbits))
    release_heap()
    return torch.stack(rows).numpy()


def release_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``; False elsewhere).

    A score table allocates intermediates of 1-30 MB per layer. glibc serves them from its
    heap once its adaptive mmap threshold has grown, and over thousands of genomes the freed
    blocks fragment it: a leave-one-out campaign over 7 benches grew from 3 to 21 GB of RSS
    and was OOM-killed. Trimming after each table keeps RSS at the live set and costs less
    than giving every large tensor its own mmap (measured: 5.4 s vs 9.2 s for the same 24
    tables; 6.0 s without either, but unbounded).
    """
    c = libc()
    if c is None or not hasattr(c, "malloc_trim"):
        return False
    c.malloc_trim(0)
    return True


class _LazyFloat64(dict):
    """``as_float64`` of one layer's inputs, each cast on first access."""

    def __init__(self, tensors: dict[str, torch.Tensor], names: set[str]):
        super().__init__()
        self.tensors, self.names = tensors, names

    def __missing__(self, key: str) -> torch.Tensor:
        if key not in self.names:
            raise KeyError(key)
        value = self[key] = self.tensors[key].double()
        return value


def as_float64(
    tensors: dict[str, torch.Tensor], names: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """One layer's inputs (only ``names``, when given) in float64: a score table is computed
    in double precision.

    Float32 sums taken in another order (another CPU, another thread count) differ in the
    last bits; in float64 such differences are ~1e-16 and vanish in ``rank_scores``'
    rounding, so a campaign takes the same path on every machine.
    """
    return {k: v.double() for k, v in tensors.items() if names is None or k in names}
