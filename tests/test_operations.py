"""Tests for primitives.operations: registry, shape rules, purity, bit slots, numerics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from primitives.operations import (
    BROADCAST,
    ELEMENTWISE,
    MATMUL,
    OPS,
    REDUCE,
    REDUCE_PER_SAMPLE,
    Kind,
    ShapeError,
    UnknownOperationError,
    apply,
    binary,
    binary_ops,
    get_op,
    unary,
    unary_ops,
)

EMQ_UNARY = (
    "log abslog abs pow exp normalize relu invert frobenius_norm normalized_sum l1_norm softmax "
    "sigmoid logsoftmax sqrt revert min_max_normalize to_mean_scalar to_std_scalar no_op"
).split()

# Bit-dependent, bit-independent, scalars per bit, and a 2-D-per-slot value.
SHAPES = [(4, 8, 3, 3, 3), (1, 8, 3, 3, 3), (4,), (1,), (1, 10, 16)]
UNARY = [OPS[name] for name in unary_ops()]
BINARY = [OPS[name] for name in binary_ops()]
ALL = UNARY + BINARY


def ids(op):
    return op.name


def value(shape, seed=0):
    """Random normal float32 tensor with some exact zeros (where EMQ's guards wrote in place)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < 0.2, torch.zeros_like(x), x)


def shape_combos(op):
    return list(itertools.product(SHAPES, repeat=op.arity))


def bits(t):
    return t.view(torch.int32)


# ----------------------------------------------------------------------------- registry


def test_registry_has_emq_unary_ops_and_enough_binary_ops():
    assert set(EMQ_UNARY) <= set(unary_ops())
    assert len(unary_ops()) >= 20
    assert {"add", "sub", "mul", "div", "matmul", "max", "min"} <= set(binary_ops())
    assert unary_ops() == sorted(unary_ops()) and binary_ops() == sorted(binary_ops())
    assert set(unary_ops()) | set(binary_ops()) == set(OPS)


@pytest.mark.parametrize("op", ALL, ids=ids)
def test_op_metadata(op):
    assert op is get_op(op.name)
    assert op.doc and "\n" not in op.doc
    assert op.arity == (1 if op.name in unary_ops() else 2)
    assert isinstance(op.kind, Kind)
    assert op.shape_rule in (ELEMENTWISE, REDUCE, REDUCE_PER_SAMPLE, BROADCAST, MATMUL)
    if op.arity == 1:
        assert not op.commutative
        assert op.kind is not Kind.REDUCE or op.shape_rule in (REDUCE, REDUCE_PER_SAMPLE)


def test_unknown_name_raises_with_name_and_valid_names():
    with pytest.raises(UnknownOperationError, match="frobnicate") as info:
        get_op("frobnicate")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "abslog" in str(info.value) and "matmul" in str(info.value)
    with pytest.raises(UnknownOperationError, match="frobnicate"):
        apply("frobnicate", torch.zeros(1, 2))


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="abs"):
        unary("abs")(lambda x: x)
    with pytest.raises(ValueError, match="add"):
        binary("add")(lambda x, y: x)


def test_apply_checks_arity_and_types():
    x = value((4, 8))
    with pytest.raises(TypeError, match="add"):
        apply("add", x)
    with pytest.raises(TypeError, match="abs"):
        apply("abs", x, x)
    with pytest.raises(TypeError, match="ndarray"):
        apply("abs", np.ones((1, 2), dtype=np.float32))
    torch.testing.assert_close(apply("sub", x, x[:1]), x - x[:1])


# ----------------------------------------------------------------------------- shapes and purity


@pytest.mark.parametrize("op", ALL, ids=ids)
def test_fn_matches_shape_rule_and_never_modifies_inputs(op):
    accepted = 0
    for seed, shapes in enumerate(shape_combos(op)):
        xs = [value(s, seed * 7 + i) for i, s in enumerate(shapes)]
        before = [x.clone() for x in xs]
        try:
            expected = op.output_shape(*shapes)
        except ShapeError:
            with pytest.raises(ShapeError):
                op.fn(*xs)
            with pytest.raises(ShapeError):
                apply(op.name, *xs)
        else:
            accepted += 1
            out = op.fn(*xs)
            assert tuple(out.shape) == expected, shapes
            assert out.dtype == torch.float32
            if op.shape_rule is REDUCE:
                assert out.shape == (shapes[0][0],)
            if op.shape_rule is REDUCE_PER_SAMPLE:
                assert out.shape == tuple(shapes[0][:2])
            assert torch.equal(bits(apply(op.name, *xs)), bits(out))
        for x, x0 in zip(xs, before, strict=True):
            assert torch.equal(bits(x), bits(x0)), f"{op.name} modified an input {shapes}"
    # per-sample reductions refuse the scalars per bit (no sample axis)
    assert accepted >= len(SHAPES) - (op.shape_rule is REDUCE_PER_SAMPLE) * 2


@pytest.mark.parametrize("op", ALL, ids=ids)
def test_bit_slots_are_independent(op):
    """Output slot i equals the op applied to input slot i alone (bit-independent operands kept)."""
    x = value((4, 6, 5), 1)
    partners = {1: [()], 2: [(value((4, 6, 5), 2),), (value((1, 6, 5), 3),)]}[op.arity]
    for rest in partners:
        out = op.fn(x, *rest)
        assert out.shape[0] == 4
        for i in range(4):
            rest_i = tuple(r[i : i + 1] if r.shape[0] == 4 else r for r in rest)
            alone = op.fn(x[i : i + 1], *rest_i)
            torch.testing.assert_close(out[i : i + 1], alone, equal_nan=True)


@pytest.mark.parametrize(
    ("rule", "shapes"),
    [
        (BROADCAST, [(4, 8, 3), (2, 8, 3)]),  # bit axes 4 and 2
        (BROADCAST, [(1, 8, 3, 3, 3), (1, 10, 16)]),
        (BROADCAST, [(4, 8), (1, 7)]),
        (MATMUL, [(1, 8, 3, 9), (1, 8, 26)]),  # 27 vs 26 columns
        (MATMUL, [(4, 8, 27), (3, 8, 27)]),
        (MATMUL, [(4, 8, 3), (4,)]),  # [8, 3] vs [1, 1]
    ],
)
def test_incompatible_binary_shapes_raise_shape_error(rule, shapes):
    with pytest.raises(ShapeError):
        rule(*shapes)
    ops = [op for op in BINARY if op.shape_rule is rule]
    assert ops
    for op in ops:
        xs = [value(s) for s in shapes]
        with pytest.raises(ShapeError):
            op.fn(*xs)
        with pytest.raises(ShapeError):
            apply(op.name, *xs)


@pytest.mark.parametrize("rule", [ELEMENTWISE, REDUCE, BROADCAST])
def test_rules_reject_values_without_bit_axis_or_with_empty_axes(rule):
    with pytest.raises(ShapeError, match="bit axis"):
        rule(())
    with pytest.raises(ShapeError, match="empty"):
        rule((4, 0, 3))


def test_broadcast_aligns_the_bit_axis():
    assert BROADCAST((4, 8, 3, 3), (4,)) == (4, 8, 3, 3)
    assert BROADCAST((1, 8, 3, 3), (4,)) == (4, 8, 3, 3)
    assert BROADCAST((4, 8, 1), (1, 5)) == (4, 8, 5)
    assert MATMUL((4, 8, 3, 3), (1, 5, 9)) == (4, 8, 5)
    assert MATMUL((4,), (1,)) == (4, 1, 1)
    x, b = value((4, 8, 3)), torch.tensor([2.0, 3.0, 4.0, 8.0])
    torch.testing.assert_close(apply("mul", x, b), x * b[:, None, None])
    torch.testing.assert_close(apply("div", b, x), b[:, None, None] / x)


# ----------------------------------------------------------------------------- bad values


PROBES = {
    "zeros": torch.zeros(4, 6),
    "negative": -torch.rand(4, 6) - 0.5,
    "constant": torch.full((4, 6), 3.0),
    "huge": torch.full((4, 6), 1e30),
    "mixed": torch.tensor([-1e30, -1.0, 0.0, 1e-30, 1.0, 1e30]).repeat(4, 1),
}
ORDINARY = ("zeros", "negative", "constant")


def run_on_probes(op, names):
    outs = {}
    for name in names:
        x = PROBES[name]
        outs[name] = op.fn(*[x] * op.arity) if op.arity == 1 else op.fn(torch.ones_like(x), x)
    return outs


@pytest.mark.parametrize("op", [op for op in ALL if op.dangerous], ids=ids)
def test_dangerous_ops_do_not_raise_and_can_be_non_finite(op):
    outs = run_on_probes(op, PROBES)
    assert any(not torch.isfinite(out).all() for out in outs.values())


@pytest.mark.parametrize("op", [op for op in ALL if not op.dangerous], ids=ids)
def test_safe_ops_stay_finite_on_ordinary_inputs_and_do_not_raise_on_extremes(op):
    run_on_probes(op, ["huge", "mixed"])
    outs = run_on_probes(op, ORDINARY)
    wide = value((4, 6)) * 1e6
    outs["wide"] = op.fn(*[wide] * op.arity)
    for name, out in outs.items():
        assert torch.isfinite(out).all(), name


def test_non_finite_values_follow_the_math():
    zero, one, neg = torch.zeros(1, 3), torch.ones(1, 3), -torch.ones(1, 3)
    assert torch.equal(apply("log", zero), torch.full((1, 3), -np.inf))
    assert torch.isnan(apply("log", neg)).all()
    assert torch.equal(apply("invert", zero), torch.full((1, 3), np.inf))
    assert torch.isnan(apply("sqrt", neg)).all()
    assert torch.isinf(apply("exp", torch.full((1, 3), 1e30))).all()
    assert torch.isinf(apply("pow", torch.full((1, 3), 1e30))).all()
    assert torch.equal(apply("div", one, zero), torch.full((1, 3), np.inf))
    assert torch.isnan(apply("div", zero, zero)).all()
    # EMQ's guards: abslog(0) = 0, a constant slot normalizes to 0.
    assert torch.equal(apply("abslog", zero), zero)
    assert torch.equal(apply("normalize", one), zero)
    assert torch.equal(apply("min_max_normalize", one), zero)
    # NaN propagates through the guarded ops instead of being masked.
    nan = torch.tensor([[np.nan, 1.0, 2.0]])
    for name in ("abslog", "normalize", "min_max_normalize", "max", "min"):
        op = get_op(name)
        assert torch.isnan(op.fn(*[nan] * op.arity)).any(), name


# ----------------------------------------------------------------------------- numerics


def per_slot(x):
    return x.numpy().astype(np.float64).reshape(x.shape[0], -1)


def close(actual, expected):
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_normalizations_match_numpy():
    x = value((3, 5, 4), 5)
    f = per_slot(x)
    mean, std = f.mean(1, keepdims=True), f.std(1, keepdims=True)
    close(apply("normalize", x), ((f - mean) / std).reshape(x.shape))
    low, high = f.min(1, keepdims=True), f.max(1, keepdims=True)
    close(apply("min_max_normalize", x), ((f - low) / (high - low)).reshape(x.shape))
    e = np.exp(f - f.max(1, keepdims=True))
    close(apply("softmax", x), (e / e.sum(1, keepdims=True)).reshape(x.shape))
    close(apply("logsoftmax", x), np.log(e / e.sum(1, keepdims=True)).reshape(x.shape))
    assert apply("softmax", x).sum(dim=(1, 2)).sub(1).abs().max() < 1e-5


def test_reductions_match_numpy():
    x = value((3, 5, 4), 6)
    f = per_slot(x)
    close(apply("frobenius_norm", x), np.linalg.norm(f, axis=1))
    close(apply("sq_norm", x), (f**2).sum(1))
    close(apply("l1_norm", x), np.abs(f).sum(1) / 20)
    close(apply("normalized_sum", x), f.sum(1) / 20)
    close(apply("to_mean_scalar", x), f.mean(1))
    close(apply("to_std_scalar", x), f.std(1))
    close(apply("sum", x), f.sum(1))
    close(apply("max_abs", x), np.abs(f).max(1))


def test_pointwise_ops_match_numpy():
    x = value((2, 7), 7)
    f = x.numpy().astype(np.float64)
    close(apply("revert", x), -f)
    close(apply("pow", x), f**2)
    close(apply("abssqrt", x), np.sqrt(np.abs(f)))
    close(apply("exp2", x), 2.0**f)
    close(apply("sigmoid", x), 1 / (1 + np.exp(-f)))
    nz = f != 0
    close(apply("abslog", x), np.where(nz, np.log(np.abs(np.where(nz, f, 1.0))), 0.0))


def test_matmul_is_per_slot_x_times_y_transposed():
    x, y = value((4, 6, 2, 3), 8), value((1, 5, 6), 9)
    out = apply("matmul", x, y)
    assert out.shape == (4, 6, 5)
    expected = np.einsum("kic,jc->kij", x.numpy().reshape(4, 6, 6), y.numpy()[0])
    close(out, expected)
    # a scalar per bit is a [1, 1] matrix: matmul of two of them is their product
    b, c = torch.tensor([2.0, 3.0, 4.0, 8.0]), torch.tensor([0.5])
    close(apply("matmul", b, c), (b * c).numpy().reshape(4, 1, 1))


# ----------------------------------------------------------------------------- algebraic flags


@pytest.mark.parametrize("op", [op for op in BINARY if op.commutative], ids=ids)
def test_commutative_flag_holds(op):
    x, y = value((4, 6, 5), 10), value((1, 6, 5), 11)
    torch.testing.assert_close(op.fn(x, y), op.fn(y, x))


def test_non_commutative_ops_are_not_flagged():
    assert {"sub", "div", "matmul"} & {op.name for op in BINARY if op.commutative} == set()


@pytest.mark.parametrize("op", [op for op in ALL if op.idempotent or op.involution], ids=ids)
def test_idempotent_and_involution_flags_hold(op):
    x = value((4, 6, 5), 12) + 0.5  # zeros replaced so invert stays finite
    if op.arity == 2:
        torch.testing.assert_close(op.fn(x, x), x)
        return
    once = op.fn(x)
    target = once if op.idempotent else x
    torch.testing.assert_close(op.fn(once), target, rtol=1e-5, atol=1e-5)


def test_flags_are_not_claimed_falsely():
    x = value((4, 6, 5), 13) + 0.5
    for name in ("to_std_scalar", "softmax", "sigmoid", "sq_norm", "pow"):
        assert not get_op(name).idempotent
        assert not torch.allclose(apply(name, apply(name, x)), apply(name, x)), name


def test_per_sample_reductions_express_the_output_space_fisher():
    """sq_norm(sample_sum(mul(Ga, D))) = sum_n (sum_i Ga[n, i] D[b, n, i])^2, per bit."""
    ga, d = value((1, 6, 3, 4, 4), 1), value((4, 6, 3, 4, 4), 2)
    got = apply("sq_norm", apply("sample_sum", apply("mul", ga, d)))
    want = torch.stack([((ga[0] * d[b]).reshape(6, -1).sum(1) ** 2).sum() for b in range(4)])
    torch.testing.assert_close(got, want)
    per_sample = apply("sample_sum", apply("mul", ga, d))
    assert per_sample.shape == (4, 6)
    torch.testing.assert_close(apply("sample_mean", d), d.reshape(4, 6, -1).mean(2))
    torch.testing.assert_close(apply("sample_norm", d), d.reshape(4, 6, -1).norm(dim=2))
    torch.testing.assert_close(apply("sample_max_abs", d), d.reshape(4, 6, -1).abs().amax(2))
    with pytest.raises(ShapeError, match="sample axis"):
        apply("sample_sum", value((4,), 3))
