"""Proxy graphs: canonical form (networkx DAG), static shapes, evaluation, score tables.

A genome is turned into a canonical expression - nested tuples ``(op, child, ...)`` with
input names as leaves - by folding ``no_op``, idempotent pairs (``abs(abs(x))``), involutions
(``revert(revert(x))``) and sorting the operands of commutative operations. Equal
subexpressions are merged into one node of a networkx DAG, whose Weisfeiler-Lehman hash
identifies equivalent genomes.
"""

from __future__ import annotations

import math
import mmap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from deap import gp

from benchmark.cluster import libc
from emq.scoring import reduce_to_bits
from primitives.inputs import BIT_DEPENDENT, PER_SAMPLE, LayerInputs
from primitives.operations import OPS, REDUCE_PER_SAMPLE, Kind, ShapeError

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

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0

    def get(self, layer: int, key: str) -> torch.Tensor | None:
        return self.entries.get((layer, key))

    def put(self, layer: int, key: str, value: torch.Tensor) -> None:
        if value.numel() > CACHE_MAX_ELEMENTS:
            return
        size = value.numel() * value.element_size()
        if self.nbytes + size > self.max_bytes:
            self.clear()
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
    ``D`` on a large layer is several hundred MB per node). A large value computed
    pointwise from the per-sample inputs and then reduced is computed a few calibration
    samples at a time (``_Evaluation``).
    """
    return _Evaluation(expr, tensors, cache, layer).value()


def evaluate_per_bit(
    expr: Expr,
    tensors: dict[str, torch.Tensor],
    num_bits: int,
    cache: SubexpressionCache | None = None,
    layer: int = 0,
) -> torch.Tensor:
    """``reduce_to_bits(evaluate(...), num_bits)``: one value per bit option; a large
    per-sample output is averaged a chunk of samples at a time, never held whole."""
    return reduce_to_bits(_Evaluation(expr, tensors, cache, layer).value(mean=True), num_bits)


# Sample-chunked evaluation. The per-sample inputs (``PER_SAMPLE``: A, Ga, D, shaped
# [k, N, ...]) are 10-50 MB a layer in float64; a pointwise chain over them that ends in a
# reduction streams every intermediate through memory and allocates (page-faults) each one
# afresh. Computed a few samples at a time, a chunk's intermediates stay in the CPU cache and
# small allocations are reused. The chunk size depends on shapes only, so every machine sums
# in the same order; partial sums differ from whole-tensor sums in the last bits, which
# ``rank_scores`` rounds away.
CHUNK_ELEMENTS = 1 << 17  # elements of a chunk's largest intermediate (1 MB in float64)
CHUNK_MIN_ELEMENTS = 1 << 20  # values smaller than this are computed whole

# Full reductions computed from chunks: (part of a chunk's [k, m] slots, how parts combine,
# finish(total, elements per slot)).
_PARTS: dict[str, tuple] = {
    "sum": (lambda f: f.sum(1), "sum", None),
    "sq_norm": (lambda f: torch.square(f).sum(1), "sum", None),
    "normalized_sum": (lambda f: f.sum(1), "sum", lambda t, n: t / n),
    "to_mean_scalar": (lambda f: f.sum(1), "sum", lambda t, n: t / n),
    "l1_norm": (lambda f: f.abs().sum(1), "sum", lambda t, n: t / n),
    "frobenius_norm": (lambda f: torch.square(f).sum(1), "sum", lambda t, n: torch.sqrt(t)),
    "max_abs": (lambda f: f.abs().amax(1), "max", None),
}
_MEAN = "to_mean_scalar"  # how ``reduce_to_bits`` reduces a graph output


@dataclass(frozen=True)
class _Plan:
    """Static facts of one node: its shape; whether its axis 1 is the calibration sample
    (``samples``); whether a chunk of it is computed from chunks of its operands
    (``chunkable``); the largest value computed per chunk in its chunkable subgraph."""

    shape: tuple[int, ...]
    samples: bool
    chunkable: bool
    largest: int


class _Evaluation:
    """One evaluation of a graph on one layer's inputs (see ``evaluate``)."""

    def __init__(self, expr, tensors, cache, layer):
        self.expr, self.tensors, self.cache, self.layer = expr, tensors, cache, layer
        self.uses: dict[str, int] = {}
        self.memo: dict[str, torch.Tensor] = {}
        self.whole: set[str] = set()  # nodes some consumer needs whole (``_needed_whole``)
        self._count(expr)
        self.plan = self._plan() if leaves(expr) & PER_SAMPLE else {}

    def _count(self, e: Expr) -> None:
        if isinstance(e, str):
            return
        key = expr_str(e)
        self.uses[key] = self.uses.get(key, 0) + 1
        if self.uses[key] == 1:
            for c in e[1:]:
                self._count(c)

    def value(self, mean: bool = False) -> torch.Tensor:
        self.whole = self._needed_whole(mean)
        try:
            with torch.no_grad():
                if mean and self._chunks(self.expr):
                    value = self._chunked(_MEAN, self.expr)
                    if value is not None:
                        return value
                return self._walk(self.expr)
        finally:
            self.memo.clear()

    # -- static plan ---------------------------------------------------------------------

    def _plan(self) -> dict[str, _Plan]:
        raw = getattr(self.tensors, "tensors", self.tensors)  # shapes without a cast
        plan: dict[str, _Plan] = {}

        def walk(e: Expr) -> _Plan:
            key = expr_str(e)
            if key in plan:
                return plan[key]
            if isinstance(e, str):
                shape = tuple(raw[e].shape)
                samples = e in PER_SAMPLE and len(shape) >= 2
                plan[key] = _Plan(shape, samples, samples, math.prod(shape))
                return plan[key]
            op = OPS[e[0]]
            kids = [walk(c) for c in e[1:]]
            shape = tuple(op.output_shape(*(k.shape for k in kids)))
            if op.arity == 1:
                samples = kids[0].samples and (
                    op.kind in (Kind.POINTWISE, Kind.SLOTWISE) or op.shape_rule is REDUCE_PER_SAMPLE
                )
                chunkable = samples and op.kind is not Kind.SLOTWISE
            else:
                rank = len(shape)
                samples = op.kind is Kind.POINTWISE and any(k.samples for k in kids)
                # Chunks line up only if every per-sample operand keeps its sample axis at
                # axis 1 and every other operand broadcasts along it.
                samples = samples and all(
                    len(k.shape) == rank if k.samples else len(k.shape) < rank or k.shape[1] == 1
                    for k in kids
                )
                chunkable = samples
            largest = max(
                [math.prod(shape)] + [k.largest for k in kids if k.chunkable and chunkable]
            )
            plan[key] = _Plan(shape, samples, chunkable, largest)
            return plan[key]

        try:
            walk(self.expr)
        except (ShapeError, TypeError):
            return {}  # evaluated whole: the operation raises as it would without a plan
        return plan

    def _chunks(self, e: Expr) -> bool:
        """Whether ``e``'s value is large and computed per chunk (when reduced)."""
        info = self.plan.get(expr_str(e)) if not isinstance(e, str) else None
        return bool(info and info.chunkable and math.prod(info.shape) >= CHUNK_MIN_ELEMENTS)

    # -- evaluation ----------------------------------------------------------------------

    def _walk(self, e: Expr) -> torch.Tensor:
        if isinstance(e, str):
            return self.tensors[e]
        key = expr_str(e)
        value = self.memo.get(key)
        if value is None:
            cache = self.cache
            value = cache.get(self.layer, key) if cache is not None else None
            if value is None:
                name = e[0]
                reduces = name in _PARTS or OPS[name].shape_rule is REDUCE_PER_SAMPLE
                if reduces and self._chunks(e[1]):
                    value = self._chunked(name, e[1])
                if value is None:
                    value = OPS[name].fn(*(self._walk(c) for c in e[1:]))
                if cache is not None:
                    cache.put(self.layer, key, value)
        self.uses[key] -= 1
        if self.uses[key] > 0:
            self.memo[key] = value
        else:
            self.memo.pop(key, None)
        return value

    def _needed_whole(self, mean: bool) -> set[str]:
        """Keys of the nodes that some consumer evaluates whole (outside every chunked
        subgraph): a node that only chunked subgraphs use is computed a chunk at a time by
        each of them, never whole."""
        if not self.plan:
            return set()
        whole: set[str] = set()
        seen: set[tuple[str, bool]] = set()

        def mark(e: Expr, chunked: bool) -> None:
            key = expr_str(e)
            if (key, chunked) in seen:
                return
            seen.add((key, chunked))
            if not chunked:
                whole.add(key)
            reduces = e[0] in _PARTS or OPS[e[0]].shape_rule is REDUCE_PER_SAMPLE
            for c in e[1:]:
                if not isinstance(c, str):
                    inside = chunked and self.plan[expr_str(c)].chunkable
                    mark(c, inside or (reduces and self._chunks(c)))

        if not isinstance(self.expr, str):
            mark(self.expr, mean and self._chunks(self.expr))
        return whole

    def _region(self, top: Expr) -> tuple[list, list[Expr]]:
        """The chunkable subgraph under a reduction: its nodes in evaluation order (key,
        function, operand references) and the operands computed whole (``outside``, once
        per reference).

        A node that another part of the graph needs whole is computed whole once (and kept
        for that use); one that only chunked subgraphs use is recomputed a chunk at a time
        by each of them: a chain over ``D`` computed whole is hundreds of MB allocated and
        page-faulted, which costs more than computing a shared product again per chunk."""
        order: list = []
        outside: list[Expr] = []
        refs: dict[str, int] = {}

        def visit(e: Expr) -> tuple[str, str]:
            if isinstance(e, str):
                return ("leaf", e)
            key = expr_str(e)
            if not self.plan[key].chunkable or key in self.whole:
                outside.append(e)
                return ("whole", key)
            refs[key] = refs.get(key, 0) + 1
            if refs[key] == 1:
                operands = [visit(c) for c in e[1:]]
                order.append((key, OPS[e[0]].fn, operands))
            return ("node", key)

        visit(top)
        for key, n in refs.items():
            self.uses[key] -= n  # consumed here, computed nowhere else
        return order, outside

    def _chunked(self, name: str, top: Expr) -> torch.Tensor | None:
        """Reduction ``name`` of the large chunkable value ``top``, a chunk of samples at a
        time: per-sample reductions are concatenated, full ones combined from parts. None
        when ``top`` is needed whole anyway (the caller reduces the whole value)."""
        if expr_str(top) in self.whole:
            return None
        order, outside = self._region(top)
        whole = {expr_str(e): self._walk(e) for e in outside}
        info = self.plan[expr_str(top)]
        n = info.shape[1]
        step = max(1, min(n, CHUNK_ELEMENTS * n // info.largest))
        parts, count = [], 0
        for start in range(0, n, step):
            chunk = self._chunk(order, whole, slice(start, start + step))
            if name in _PARTS:
                flat = chunk.reshape(chunk.shape[0], -1)
                parts.append(_PARTS[name][0](flat))
                count += flat.shape[1]
            else:
                parts.append(OPS[name].fn(chunk))
        if name not in _PARTS:
            return torch.cat(parts, dim=1)
        _, combine, finish = _PARTS[name]
        stacked = torch.stack(parts)
        total = stacked.sum(0) if combine == "sum" else stacked.amax(0)
        return total if finish is None else finish(total, count)

    def _chunk(self, order: list, whole: dict[str, torch.Tensor], rows: slice) -> torch.Tensor:
        """The region's top value on the samples ``rows``."""
        vals: dict[str, torch.Tensor] = {}
        for key, fn, operands in order:
            args = []
            for kind, name in operands:
                if kind == "node":
                    args.append(vals[name])
                    continue
                value = self.tensors[name] if kind == "leaf" else whole[name]
                args.append(value[:, rows] if self.plan[name].samples else value)
            vals[key] = fn(*args)
        return vals[order[-1][0]]


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
        rows.append(evaluate_per_bit(expr, lazy, nbits, cache, i))
    release_heap()
    return torch.stack(rows).numpy()


# A proxy ``revert(sq_norm(X))`` whose per-layer term ``X`` has the same shape in every layer
# (``Dz``: [bits, images, classes]) can also score a configuration *jointly*: the layers'
# terms at their bit-widths are added before the norm, ``-|sum_l X_l[b_l]|^2``, so the
# cross-layer products count (for ``Dz``, the whole configuration's second-order output KL;
# the table's ``-sum_l |X_l[b_l]|^2`` is its diagonal). No score table expresses it, so the
# allocators keep the table; ``emq score`` ranks configurations with it.
JOINT_BLOCK = 1 << 22  # elements of one block of summed configurations (32 MB in float64)
# The weight of the cross-layer terms in the joint combination: a configuration's score is
# ``-[(1 - a) sum_l |X_l|^2 + a |sum_l X_l|^2]`` = ``-(diagonal + a * cross terms)``; ``a =
# 1`` the joint form, ``a = 0`` the per-layer table. The cross terms assume the layers'
# changes add linearly, which is where the joint form loses (``emq.perf.joint_linearity``);
# ``python -m emq.perf.joint_shrink`` (README, "Shrinking the cross terms") chose 0.75 on the
# eight zoo models (the grid 0 / 0.25 / 0.5 / 0.75 / 1, two batch seeds), not on the examples.
DEFAULT_CROSS = 0.75


def check_cross(cross: float) -> float:
    """``cross`` as a float in [0, 1], or a clear error."""
    value = float(cross)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"the cross-layer weight must be in [0, 1] (0: the per-layer table, 1: the full "
            f"joint form), got {cross!r}"
        )
    return value


def joint_operand(expr: Expr) -> Expr:
    """``X`` of a proxy ``revert(sq_norm(X))``; a clear error for any other proxy."""
    if (
        isinstance(expr, tuple)
        and expr[0] == "revert"
        and isinstance(expr[1], tuple)
        and expr[1][0] == "sq_norm"
    ):
        return expr[1][1]
    raise ValueError(
        f"the joint combination needs a proxy of the form revert(sq_norm(X)), "
        f"not {expr_str(expr)}; score it per layer (combine 'table')"
    )


def joint_terms(expr: Expr, inputs: LayerInputs) -> list[torch.Tensor]:
    """Each layer's ``X`` (``joint_operand``) in float64, ``[bits or 1, ...]``; a clear
    error when their non-bit shapes differ between layers."""
    operand = joint_operand(expr)
    names = leaves(operand)
    terms = [
        evaluate(operand, _LazyFloat64(inputs.tensors[i], names), layer=i)
        for i in range(inputs.num_layers)
    ]
    shapes = [tuple(t.shape[1:]) for t in terms]
    for i, shape in enumerate(shapes):
        if shape != shapes[0]:
            raise ValueError(
                f"{expr_str(operand)} has shape {list(shapes[0])} in layer 0 and {list(shape)} "
                f"in layer {i}: the layers' terms cannot be added (joint combination); score "
                "this proxy per layer (combine 'table')"
            )
    return terms


def joint_gram(expr: Expr, inputs: LayerInputs) -> np.ndarray:
    """``G[l, b, m, c] = <X_l[b], X_m[c]>`` (float64) of a proxy ``revert(sq_norm(X))``: what
    its joint score of any configuration is made of, ``-sum_{l, m} G[l, b_l, m, b_m]``
    (``gram_scores``), its table the diagonal ``-G[l, b, l, b]``. ``L x B`` squared values:
    a pool of allocations is scored from it without the inputs (``emq allocate --verify``).
    A bit-independent ``X_l`` is repeated at every bit."""
    terms = joint_terms(expr, inputs)
    bits = max(t.shape[0] for t in terms)
    flat = torch.cat([t.expand(bits, *t.shape[1:]).reshape(bits, -1) for t in terms])
    gram = (flat @ flat.T).reshape(len(terms), bits, len(terms), bits)
    release_heap()
    return gram.numpy()


def gram_scores(gram: np.ndarray, bit_index: np.ndarray, cross: float = 1.0) -> np.ndarray:
    """Joint scores ``-sum_{l, m} G[l, b_l, m, b_m]`` of configurations ``bit_index [N, L]``
    from a ``joint_gram`` ``G [L, B, L, B]``, a block of configurations at a time; the terms
    ``l != m`` weighted by ``cross`` (``DEFAULT_CROSS``)."""
    cross = check_cross(cross)
    gram = np.asarray(gram, dtype=np.float64)
    layers, bits = gram.shape[:2]
    bit_index = np.asarray(bit_index, dtype=np.int64)
    if bit_index.ndim != 2 or bit_index.shape[1] != layers:
        raise ValueError(f"configurations have {bit_index.shape[-1]} layers, the Gram {layers}")
    flat = gram.reshape(layers * bits, layers * bits)
    rows = np.arange(layers) * bits + bit_index  # [N, L] rows of ``flat``
    block = max(1, JOINT_BLOCK // max(1, layers * layers))
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), block):
        r = rows[start : start + block]
        full = flat[r[:, :, None], r[:, None, :]].sum((1, 2))
        if cross != 1.0:
            diagonal = flat[r, r].sum(1)
            full = cross * full + (1.0 - cross) * diagonal
        out[start : start + len(r)] = -full
    return out


def joint_scores(
    expr: Expr, inputs: LayerInputs, bit_index: np.ndarray, cross: float = 1.0
) -> np.ndarray:
    """Scores ``-|sum_l X_l[b_l]|^2`` of configurations ``bit_index [N, L]`` (candidate
    indices) for a proxy ``revert(sq_norm(X))``, in float64, a block of configurations at a
    time; a bit-independent ``X_l`` (bit axis 1) counts at every bit. With ``cross < 1``:
    ``-[(1 - cross) sum_l |X_l[b_l]|^2 + cross |sum_l X_l[b_l]|^2]`` (``DEFAULT_CROSS``)."""
    cross = check_cross(cross)
    bit_index = np.asarray(bit_index, dtype=np.int64)
    if bit_index.ndim != 2 or bit_index.shape[1] != inputs.num_layers:
        raise ValueError(
            f"configurations have {bit_index.shape[-1]} layers, the model has "
            f"{inputs.num_layers} quantizable layers"
        )
    terms = joint_terms(expr, inputs)
    shape = tuple(terms[0].shape[1:])
    block = max(1, JOINT_BLOCK // max(1, math.prod(shape)))
    out = np.empty(len(bit_index), dtype=np.float64)
    for start in range(0, len(bit_index), block):
        rows = torch.from_numpy(bit_index[start : start + block])
        total = torch.zeros((len(rows), *shape), dtype=torch.float64)
        diagonal = torch.zeros(len(rows), dtype=torch.float64)
        for layer, term in enumerate(terms):
            part = term[rows[:, layer] if term.shape[0] > 1 else torch.zeros_like(rows[:, 0])]
            total += part
            if cross != 1.0:
                diagonal += torch.square(part).reshape(len(rows), -1).sum(1)
        full = torch.square(total).reshape(len(rows), -1).sum(1)
        if cross != 1.0:
            full = cross * full + (1.0 - cross) * diagonal
        out[start : start + len(rows)] = -full
    release_heap()
    return out


# ``release_heap`` trims only once the heap's resident memory has grown this much since the
# last trim: a trim walks every free chunk of the heap (several ms once it has fragmented),
# while a table's intermediates are back in the free lists a moment later.
TRIM_GROWTH = 256 << 20


def release_heap(force: bool = False) -> bool:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``) when it has grown.

    A score table allocates intermediates of 1-30 MB per layer. glibc serves them from its
    heap once its adaptive mmap threshold has grown, and over thousands of genomes the freed
    blocks fragment it: a leave-one-out campaign over 7 benches grew from 3 to 21 GB of RSS
    and was OOM-killed. Trimming keeps RSS near the live set and costs less than giving
    every large tensor its own mmap (measured: 5.4 s vs 9.2 s for the same 24 tables; 6.0 s
    without either, but unbounded). Trimming after *every* table cost 12 % of a zoo
    campaign's time (profiled, 8.5 ms a trim), so the trim runs only when the process's
    anonymous resident memory exceeds what it was after the last trim by ``TRIM_GROWTH``
    (or when ``force``d). Returns whether it trimmed (False where there is no glibc).
    """
    global _after_trim
    c = libc()
    if c is None or not hasattr(c, "malloc_trim"):
        return False
    anon = _anonymous_resident()
    if not force and anon is not None and anon - _after_trim < TRIM_GROWTH:
        return False
    c.malloc_trim(0)
    _after_trim = _anonymous_resident() or 0
    return True


_after_trim = 0  # anonymous resident bytes after this process's last trim


def _anonymous_resident() -> int | None:
    """Resident bytes not backed by a file (``/proc/self/statm``; None where absent)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident, shared = (int(x) for x in f.read().split()[1:3])
    except (OSError, ValueError):
        return None
    return (resident - shared) * mmap.PAGESIZE


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
