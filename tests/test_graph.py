"""Proxy graphs: canonical form, DAG hash, static shapes, evaluation and score tables.

Synthetic per-layer inputs with the real layout (leading bit axis, B = 4 candidates): a conv
layer (weight [8, 4, 3, 3], output [6, 8, 5, 5] for a batch of 6) and a linear layer
(weight [10, 16], output [6, 10]).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from deap import gp
from torch.overrides import TorchFunctionMode

from benchmark.ptq import LayerInfo
from emq.genome import PSET, from_string, gen_branched, gen_tree, to_names
from emq.graph import (
    as_float64,
    canonical,
    dag_hash,
    depends_on_bits,
    evaluate,
    evaluate_per_bit,
    expr_str,
    infer_shape,
    leaves,
    ops_used,
    score_table,
    to_dag,
)
from emq.osp import OperationSampler
from emq.scoring import reduce_to_bits
from primitives.inputs import BIT_DEPENDENT, INPUT_NAMES, LayerInputs
from primitives.operations import OPS, ShapeError

BITS = (2, 3, 4, 8)


def _layer(seed: int, weight: tuple[int, ...], output: tuple[int, ...]) -> dict:
    gen = torch.Generator().manual_seed(seed)
    B = len(BITS)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    w = randn(1, *weight)
    e = 0.05 * randn(B, *weight)
    return {
        "A": randn(1, *output),
        "W": w,
        "G": randn(1, *weight),
        "H": randn(1, *weight).abs(),
        "V": randn(1, *weight).abs(),
        "Ga": randn(1, *output),
        "Wq": w - e,
        "E": e,
        "D": 0.1 * randn(B, *output),
        "b": torch.tensor(BITS, dtype=torch.float32),
        "Dz": 0.1 * randn(B, output[0], 10),  # [bit, sample, class]
    }


CONV = _layer(0, (8, 4, 3, 3), (6, 8, 5, 5))
LINEAR = _layer(1, (10, 16), (6, 10))
LAYERS = [CONV, LINEAR]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def _shapes(layer: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in layer.items()}


def _genomes(n: int, seed: int) -> list:
    sampler, rng = OperationSampler(enabled=False), random.Random(seed)
    return [gen_branched(sampler, rng) if i % 2 else gen_tree(sampler, rng) for i in range(n)]


def _canon(text: str):
    return canonical(from_string(text))


def _text(text: str) -> str:
    return expr_str(_canon(text))


# --------------------------------------------------------------------------- canonical form


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no_op(E)", "E"),
        ("no_op(no_op(abs(no_op(E))))", "abs(E)"),
        ("abs(abs(E))", "abs(E)"),
        ("abs(no_op(abs(E)))", "abs(E)"),
        ("relu(relu(relu(D)))", "relu(D)"),
        ("frobenius_norm(frobenius_norm(E))", "frobenius_norm(E)"),
        ("revert(revert(E))", "E"),
        ("revert(revert(revert(E)))", "revert(E)"),
        ("invert(no_op(invert(W)))", "W"),
        ("max(E, no_op(E))", "E"),
        ("min(abs(abs(D)), abs(D))", "abs(D)"),
        ("sqrt(sqrt(E))", "sqrt(sqrt(E))"),  # not idempotent
        ("pow(pow(E))", "pow(pow(E))"),
        ("sub(E, E)", "sub(E, E)"),  # sub is not idempotent
    ],
)
def test_canonical_folds(text, expected):
    assert _text(text) == expected


@pytest.mark.parametrize(
    "a, b",
    [
        ("mul(W, b)", "mul(b, W)"),
        ("add(E, sq_norm(W))", "add(sq_norm(W), E)"),
        ("max(Wq, E)", "max(E, Wq)"),
        ("mul(add(E, b), abs(W))", "mul(abs(W), add(b, no_op(E)))"),
        ("sub(mul(b, E), W)", "sub(mul(E, b), W)"),
    ],
)
def test_canonical_sorts_commutative_operands(a, b):
    assert _canon(a) == _canon(b)
    assert dag_hash(_canon(a)) == dag_hash(_canon(b))


@pytest.mark.parametrize(
    "a, b",
    [("sub(W, E)", "sub(E, W)"), ("div(E, b)", "div(b, E)"), ("matmul(E, W)", "matmul(W, E)")],
)
def test_canonical_keeps_non_commutative_order(a, b):
    assert _canon(a) != _canon(b)
    assert _text(a) == a
    assert dag_hash(_canon(a)) != dag_hash(_canon(b))


def test_canonical_is_a_fixed_point():
    for g in _genomes(200, seed=0):
        c = _text(str(g))
        assert _text(c) == c


def test_canonical_form_computes_the_same_values():
    """Folding is sound: the canonical graph equals DEAP's compiled original tree."""
    checked = 0
    for g in _genomes(100, seed=1):
        fn = gp.compile(g, PSET)
        for layer in LAYERS:
            try:
                raw = fn(*(layer[n] for n in INPUT_NAMES))
            except ShapeError:
                with pytest.raises(ShapeError):
                    evaluate(canonical(g), layer)
                continue
            out = evaluate(canonical(g), layer)
            assert out.shape == raw.shape, str(g)
            torch.testing.assert_close(out, raw, rtol=1e-4, atol=1e-5, equal_nan=True, msg=str(g))
            checked += 1
    assert checked > 80


# --------------------------------------------------------------------------- DAG and hash


def test_dag_hash_identifies_equal_canonical_forms_only():
    by_hash: dict[str, set[str]] = {}
    by_text: dict[str, set[str]] = {}
    for g in _genomes(200, seed=2) + _genomes(200, seed=3):
        c = canonical(g)
        h, text = dag_hash(c), expr_str(c)
        by_hash.setdefault(h, set()).add(text)
        by_text.setdefault(text, set()).add(h)
    assert all(len(v) == 1 for v in by_hash.values())
    assert all(len(v) == 1 for v in by_text.values())
    assert len(by_hash) > 300


def _nested(names: list[str]) -> tuple:
    """Prefix names -> nested ``(name, *children)`` (our own reading, not the engine's)."""

    def take(i: int) -> tuple[tuple, int]:
        name, i = names[i], i + 1
        children = []
        for _ in range(OPS[name].arity if name in OPS else 0):
            child, i = take(i)
            children.append(child)
        return (name, *children), i

    return take(0)[0]


def _rewrite(node: tuple, rng: random.Random) -> str:
    """An equivalent formula: random no_op / revert-pair insertions, doubled idempotent ops,
    swapped commutative operands."""
    name, *children = node
    args = [_rewrite(c, rng) for c in children]
    if name in OPS and OPS[name].commutative and rng.random() < 0.5:
        args.reverse()
    text = f"{name}({', '.join(args)})" if args else name
    if name in OPS and OPS[name].arity == 1 and OPS[name].idempotent and rng.random() < 0.3:
        text = f"{name}({text})"
    r = rng.random()
    if r < 0.2:
        text = f"no_op({text})"
    elif r < 0.3:
        text = f"revert(revert({text}))"
    return text


def test_dag_hash_is_invariant_under_equivalence_rewrites():
    rng = random.Random(0)
    for g in _genomes(150, seed=6):
        variant = _rewrite(_nested(to_names(g)), rng)
        assert dag_hash(canonical(from_string(variant))) == dag_hash(canonical(g)), variant
        assert expr_str(canonical(from_string(variant))) == expr_str(canonical(g))


@pytest.mark.parametrize(
    "a, b",
    [
        ("E", "W"),
        ("abs(E)", "relu(E)"),
        ("sub(E, E)", "sub(E, b)"),
        ("mul(E, E)", "add(E, E)"),
        ("mul(abs(E), abs(E))", "mul(abs(E), E)"),
        ("add(mul(E, b), W)", "mul(add(E, b), W)"),
        ("sq_norm(E)", "sq_norm(sq_norm(E))"),
        ("sub(abs(E), E)", "sub(E, abs(E))"),
    ],
)
def test_dag_hash_differs_for_different_graphs(a, b):
    assert dag_hash(_canon(a)) != dag_hash(_canon(b))


def test_to_dag_merges_common_subexpressions():
    g = to_dag(_canon("mul(abs(E), abs(E))"))
    labels = sorted(d["label"] for _, d in g.nodes(data=True))
    assert labels == ["E", "abs", "root:mul"]
    assert g.graph["root"] == "mul(abs(E), abs(E))"
    assert g.number_of_edges() == 2

    g = to_dag(_canon("add(sq_norm(mul(E, b)), to_mean_scalar(mul(b, E)))"))
    labels = [d["label"] for _, d in g.nodes(data=True)]
    assert labels.count("mul") == 1 and labels.count("E") == 1 and labels.count("b") == 1
    assert len(labels) == 6


def test_to_dag_edges_carry_operand_position_of_non_commutative_ops():
    g = to_dag(_canon("sub(W, abs(E))"))
    root = g.graph["root"]
    assert g.edges[root, "W"]["pos"] == "0"
    assert g.edges[root, "abs(E)"]["pos"] == "1"
    g = to_dag(_canon("mul(W, abs(E))"))
    assert {d["pos"] for _, _, d in g.edges(data=True)} == {"0"}


def test_leaves_ops_and_bit_dependence():
    expr = _canon("mul(sq_norm(E), to_mean_scalar(H))")
    assert leaves(expr) == {"E", "H"}
    assert ops_used(expr) == {"mul", "sq_norm", "to_mean_scalar"}
    assert depends_on_bits(expr)
    for text in ("sq_norm(W)", "add(G, H)", "matmul(A, Ga)", "mul(V, abs(W))"):
        assert not depends_on_bits(_canon(text)), text
    for text in ("mul(W, b)", "mul(A, D)", "Wq", "sub(abs(E), W)"):
        assert depends_on_bits(_canon(text)), text
    for name in INPUT_NAMES:
        assert depends_on_bits(name) == (name in BIT_DEPENDENT)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "text, shape",
    [
        ("mul(W, b)", (4, 8, 4, 3, 3)),
        ("sq_norm(E)", (4,)),
        ("sq_norm(W)", (1,)),
        ("matmul(E, W)", (4, 8, 8)),
        ("matmul(D, A)", (4, 6, 6)),
        ("mul(sq_norm(E), A)", (4, 6, 8, 5, 5)),
        ("softmax(D)", (4, 6, 8, 5, 5)),
    ],
)
def test_infer_shape_examples(text, shape):
    expr = _canon(text)
    assert infer_shape(expr, _shapes(CONV)) == shape
    assert tuple(evaluate(expr, CONV).shape) == shape


@pytest.mark.parametrize("text", ["matmul(A, E)", "mul(W, A)", "add(E, D)", "sub(Ga, G)"])
def test_infer_shape_rejects_incompatible_graphs(text):
    with pytest.raises(ShapeError):
        infer_shape(_canon(text), _shapes(CONV))
    with pytest.raises(ShapeError):
        evaluate(_canon(text), CONV)


def test_infer_shape_names_a_missing_input():
    with pytest.raises(KeyError, match="'E'"):
        infer_shape(_canon("sq_norm(E)"), {"W": (1, 8, 4, 3, 3)})


def test_infer_shape_agrees_with_evaluate_on_generated_genomes():
    counts = {"ok": 0, "shape": 0}
    for g in _genomes(250, seed=4):
        expr = canonical(g)
        for layer in LAYERS:
            try:
                inferred = infer_shape(expr, _shapes(layer))
            except ShapeError:
                with pytest.raises(ShapeError):
                    evaluate(expr, layer)
                counts["shape"] += 1
                continue
            assert tuple(evaluate(expr, layer).shape) == inferred, expr_str(expr)
            counts["ok"] += 1
    assert counts["ok"] > 200 and counts["shape"] > 20


# --------------------------------------------------------------------------- evaluation


def _sq_norm(x: torch.Tensor) -> torch.Tensor:
    return (x.reshape(x.shape[0], -1) ** 2).sum(1)


class _CountCalls(TorchFunctionMode):
    """Counts torch function calls by name (instrumentation of torch, not of the engine)."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_evaluate_values_and_shared_subexpressions_once():
    expr = _canon("mul(sq_norm(E), sq_norm(E))")
    with _CountCalls() as counter:
        out = evaluate(expr, CONV)
    torch.testing.assert_close(out, _sq_norm(CONV["E"]) ** 2)
    assert counter.calls.get("square") == 1  # sq_norm evaluated once
    assert counter.calls.get("mul") == 1


def test_evaluate_frees_intermediates_without_a_garbage_collection(monkeypatch):
    # A closure-held memo would keep every intermediate alive until a cyclic GC: with D on a
    # large layer that is hundreds of MB per node, and a campaign grew past 24 GB of RSS.
    import dataclasses
    import gc
    import weakref

    refs = []
    for name in ("pow", "mul"):
        op = OPS[name]

        def spy(*xs, _fn=op.fn):
            out = _fn(*xs)
            refs.append(weakref.ref(out))
            return out

        monkeypatch.setitem(OPS, name, dataclasses.replace(op, fn=spy))
    gc.disable()
    try:
        out = evaluate(_canon("sum(mul(D, abs(pow(mul(D, pow(D))))))"), CONV)
        assert out.shape == (4,)
        assert len(refs) == 4 and all(r() is None for r in refs)
    finally:
        gc.enable()


def test_evaluate_hand_computed_examples():
    e, b, w, h = CONV["E"], CONV["b"], CONV["W"], CONV["H"]
    torch.testing.assert_close(
        evaluate(_canon("revert(mul(to_mean_scalar(H), sq_norm(E)))"), CONV),
        -(h.mean() * _sq_norm(e)),
    )
    torch.testing.assert_close(evaluate(_canon("mul(W, b)"), CONV), w * b.reshape(4, 1, 1, 1, 1))
    ga, d = CONV["Ga"], CONV["D"]
    torch.testing.assert_close(
        evaluate(_canon("sum(mul(Ga, D))"), CONV), (ga * d).reshape(4, -1).sum(1)
    )


def test_evaluate_never_changes_its_inputs():
    before = {k: v.clone() for k, v in CONV.items()}
    for g in _genomes(80, seed=5):
        try:
            evaluate(canonical(g), CONV)
        except ShapeError:
            pass
    for k, v in CONV.items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- score tables


def _inputs() -> LayerInputs:
    infos = [
        LayerInfo("conv", "conv", (8, 4, 3, 3), 288, 288 * 25),
        LayerInfo("fc", "linear", (10, 16), 160, 160),
    ]
    return LayerInputs(infos, BITS, LAYERS)


@pytest.mark.parametrize(
    "text",
    [
        "revert(mul(to_mean_scalar(H), sq_norm(E)))",
        "sum(mul(Ga, D))",
        "mul(W, b)",
        "abs(E)",
        "sq_norm(W)",
        "matmul(E, Wq)",
    ],
)
def test_score_table_is_per_layer_reduce_of_evaluate(text):
    expr, inputs = _canon(text), _inputs()
    table = score_table(expr, inputs)
    assert table.shape == (2, len(BITS)) and table.dtype == np.float64
    for i, layer in enumerate(LAYERS):
        row = reduce_to_bits(evaluate(expr, as_float64(layer)), len(BITS)).numpy()
        np.testing.assert_array_equal(table[i], row)
    np.testing.assert_array_equal(score_table(expr, inputs, [1]), table[1:])


def test_score_table_of_a_bit_independent_graph_is_constant_per_layer():
    table = score_table(_canon("sq_norm(W)"), _inputs())
    expected = [_sq_norm(CONV["W"]).item(), _sq_norm(LINEAR["W"]).item()]
    np.testing.assert_allclose(table, np.repeat(np.array(expected)[:, None], 4, 1), rtol=1e-6)


def test_subexpression_cache_reuses_small_results_exactly():
    from emq.graph import SubexpressionCache

    inputs = _inputs()
    cache = SubexpressionCache()
    first = _canon("revert(sum(abs(sum(mul(Ga, D)))))")
    second = _canon("sq_norm(sum(mul(Ga, D)))")
    for expr in (first, second, first):
        np.testing.assert_array_equal(
            score_table(expr, inputs, cache=cache), score_table(expr, inputs)
        )
    # The shared reduction is stored once per layer; the big product is never stored.
    assert (0, "sum(mul(D, Ga))") in cache.entries or (0, "sum(mul(Ga, D))") in cache.entries
    assert all(v.numel() <= 1 << 14 for v in cache.entries.values())
    tiny = SubexpressionCache(max_bytes=64)
    score_table(second, inputs, cache=tiny)
    assert tiny.nbytes <= 64


def test_heap_is_trimmed_once_it_has_grown(monkeypatch):
    import sys

    import emq.graph as graph

    if not sys.platform.startswith("linux"):  # no glibc: nothing is trimmed
        assert graph.release_heap(force=True) is False
        return
    monkeypatch.setattr(graph, "TRIM_GROWTH", 32 << 20)
    assert graph.release_heap(force=True) is True  # sets the baseline
    assert graph.release_heap() is False  # nothing has grown since
    np.empty(4 << 20, np.uint8).fill(1)  # freed: glibc's mmap threshold rises to 4 MB
    blocks = [np.ones(1 << 17) for _ in range(96)]  # 96 x 1 MB from the heap
    del blocks[::2]  # 48 MB freed inside the heap, which cannot shrink from its top
    before = graph._anonymous_resident()
    assert graph.release_heap() is True
    assert before - graph._anonymous_resident() >= 32 << 20
    assert graph.release_heap() is False


# --------------------------------------------------------------------------- sample chunks


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk the test layers' per-sample values (N = 6) two samples at a time."""
    import emq.graph

    monkeypatch.setattr(emq.graph, "CHUNK_MIN_ELEMENTS", 100)
    monkeypatch.setattr(emq.graph, "CHUNK_ELEMENTS", 1600)  # D is 4 x 6 x 200: 2 samples


def _whole(expr, layer):
    import emq.graph

    saved = emq.graph.CHUNK_MIN_ELEMENTS
    emq.graph.CHUNK_MIN_ELEMENTS = 1 << 62
    try:
        return evaluate_per_bit(expr, as_float64(layer), len(BITS))
    finally:
        emq.graph.CHUNK_MIN_ELEMENTS = saved


def _spy(monkeypatch, names):
    """Record the shape of every result of the operations ``names``."""
    import dataclasses

    shapes = []
    for name in names:
        op = OPS[name]

        def spy(*xs, _fn=op.fn):
            out = _fn(*xs)
            shapes.append(tuple(out.shape))
            return out

        monkeypatch.setitem(OPS, name, dataclasses.replace(op, fn=spy))
    return shapes


@pytest.mark.parametrize(
    "text",
    [
        "sq_norm(sample_sum(mul(D, Ga)))",  # per-sample reduction: chunks concatenated
        "revert(sq_norm(mul(D, Ga)))",
        "l1_norm(abssqrt(mul(D, A)))",
        "normalized_sum(mul(D, sq_norm(E)))",  # a per-bit scalar broadcast into the chunk
        "frobenius_norm(sub(D, Ga))",
        "max_abs(mul(tanh(D), Ga))",
        "to_mean_scalar(mul(normalize(D), Ga))",  # a slot statistic: computed whole, sliced
        "mul(D, Ga)",  # the output itself: averaged per bit a chunk at a time
        "sample_norm(mul(D, add(Ga, D)))",
    ],
)
def test_chunked_evaluation_equals_whole_evaluation(monkeypatch, small_chunks, text):
    expr = _canon(text)
    shapes = _spy(monkeypatch, ["mul", "sub", "abssqrt", "tanh"])
    for layer in LAYERS:
        whole = _whole(expr, layer)
        shapes.clear()
        chunked = evaluate_per_bit(expr, as_float64(layer), len(BITS))
        torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=0)
        if layer is CONV:  # the conv layer's D (4 x 6 x 8 x 5 x 5) is chunked by 2 samples
            assert shapes and all(s[1] == 2 for s in shapes if len(s) == 5), shapes


def test_per_sample_reductions_of_chunks_are_exact(small_chunks):
    expr = _canon("sample_sum(mul(D, Ga))")
    out = evaluate(expr, as_float64(CONV))
    assert out.shape == (4, 6)
    layer = as_float64(CONV)
    torch.testing.assert_close(out, (layer["D"] * layer["Ga"]).reshape(4, 6, -1).sum(2))


def test_a_value_also_used_outside_the_reduction_is_computed_whole(monkeypatch, small_chunks):
    # mul(D, Ga) feeds both the reduction and normalize: it is computed once, whole.
    expr = _canon("add(mul(D, Ga), normalize(mul(D, Ga)))")
    shapes = _spy(monkeypatch, ["mul"])
    out = evaluate_per_bit(expr, as_float64(CONV), len(BITS))
    assert shapes == [(4, 6, 8, 5, 5)]
    torch.testing.assert_close(out, _whole(expr, CONV), rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    "text",
    [
        # mul(D, Ga) feeds two chunked reductions: each recomputes it a chunk at a time.
        "add(sq_norm(sample_sum(mul(D, Ga))), sum(abssqrt(mul(D, mul(D, Ga)))))",
        # ... and a product shared inside one reduction's subgraph and under another one.
        "sum(mul(abssqrt(mul(D, mul(D, Ga))), sq_norm(sum(abs(sample_sum(mul(D, Ga)))))))",
    ],
)
def test_a_value_shared_by_chunked_reductions_is_never_computed_whole(
    monkeypatch, small_chunks, text
):
    expr = _canon(text)
    shapes = _spy(monkeypatch, ["mul"])
    out = evaluate_per_bit(expr, as_float64(CONV), len(BITS))
    assert shapes and all(s[1] == 2 for s in shapes if len(s) == 5), shapes
    torch.testing.assert_close(out, _whole(expr, CONV), rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    "text",
    [
        # softmax needs mul(D, Ga) whole; the reductions slice it
        "sum(mul(abssqrt(mul(mul(D, Ga), softmax(mul(mul(D, Ga), D)))),"
        " sq_norm(abs(sample_sum(mul(D, Ga))))))",
        # the reduced value itself is needed whole by softmax, before or after the reduction
        "add(sample_sum(mul(D, Ga)), sum(softmax(mul(D, Ga))))",
        "add(sum(softmax(mul(D, Ga))), sample_sum(mul(D, Ga)))",
    ],
)
def test_values_needed_whole_are_computed_once_and_sliced(monkeypatch, small_chunks, text):
    expr = _canon(text)
    shapes = _spy(monkeypatch, ["mul"])
    out = evaluate_per_bit(expr, as_float64(CONV), len(BITS))
    chunked = sum(math.prod(s) for s in shapes)
    shapes.clear()
    torch.testing.assert_close(out, _whole(expr, CONV), rtol=1e-13, atol=0)
    assert chunked == sum(math.prod(s) for s in shapes)  # each product computed once


def test_misaligned_sample_axes_are_evaluated_whole(monkeypatch, small_chunks):
    # sample_sum(D) is (4, 6): broadcast against A it lines up with A's last axis, not its
    # samples, so no chunk of it is taken.
    layer = {**as_float64(CONV), "A": torch.randn(1, 6, 8, 5, 6, dtype=torch.float64)}
    expr = _canon("sum(mul(A, sample_sum(D)))")
    shapes = _spy(monkeypatch, ["mul"])
    out = evaluate_per_bit(expr, layer, len(BITS))
    assert shapes == [(4, 6, 8, 5, 6)]
    expected = (layer["A"] * layer["D"].reshape(4, 6, -1).sum(2)[:, None, None, None, :]).sum(
        (1, 2, 3, 4)
    )
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=0)


def test_chunked_scores_rank_generated_genomes_like_whole_ones(small_chunks):
    from emq.scoring import rank_scores

    checked = 0
    for g in _genomes(150, seed=11):
        expr = canonical(g)
        for layer in LAYERS:
            try:
                whole = _whole(expr, layer).numpy()
            except ShapeError:
                continue
            chunked = evaluate_per_bit(expr, as_float64(layer), len(BITS)).numpy()
            np.testing.assert_array_equal(np.isfinite(chunked), np.isfinite(whole))
            fin = np.isfinite(whole)
            np.testing.assert_allclose(chunked[fin], whole[fin], rtol=1e-9, atol=1e-300)
            np.testing.assert_array_equal(rank_scores(chunked), rank_scores(whole))
            checked += 1
    assert checked > 50
