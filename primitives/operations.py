"""Operations of the proxy search space: a registry of unary and binary tensor functions.

Every value in a proxy graph is a float32 tensor whose axis 0 is the *bit axis*: size ``B``
(one *slot* per candidate bit-width) for bit-dependent values, size 1 for bit-independent
ones, which broadcast against ``B``. A scalar per bit has shape ``(k,)`` with ``k`` in
``{1, B}``. Every operation keeps the slots independent: slot ``i`` of the output depends only
on slot ``i`` of each input (slot 0 of a size-1 input). Reductions reduce every axis but the
bit axis, giving ``(k,)``; statistics (mean, std, min, max, softmax) are taken per slot over
all non-bit axes.

Adding an operation is one decorated function (as zero-cost-nas's ``@measure``)::

    @unary("tanh")
    def _tanh(x: Tensor) -> Tensor:
        \"\"\"Hyperbolic tangent.\"\"\"
        return torch.tanh(x)

Each operation declares a :class:`ShapeRule`, evaluated on shapes alone so that screening
rejects shape-incompatible graphs before any tensor math. ``fn`` and ``shape_rule`` agree:
``fn(*xs).shape == shape_rule(*(x.shape for x in xs))``, and a binary ``fn`` raises
:class:`ShapeError` (never a raw ``RuntimeError``) when its rule does.

Operations never modify an input in place (outputs may share memory with an input, e.g.
``no_op``), and never raise on bad values: ``log(0)`` is ``-inf``, ``invert(0)`` is ``inf``,
``sqrt(-1)`` is NaN, so the numeric probe of screening sees non-finite values and rejects the
graph. Guards are kept only where EMQ has them (``abslog(0) = 0``; a constant slot normalizes
to zeros).

The bit-axis-aware broadcasting of :data:`BROADCAST` and the matrix convention of
:data:`MATMUL` are documented on their rule functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

Shape = tuple[int, ...]

__all__ = [
    "BROADCAST",
    "ELEMENTWISE",
    "MATMUL",
    "OPS",
    "REDUCE",
    "REDUCE_PER_SAMPLE",
    "Kind",
    "Op",
    "ShapeError",
    "ShapeRule",
    "UnknownOperationError",
    "apply",
    "binary",
    "binary_ops",
    "get_op",
    "unary",
    "unary_ops",
]


class ShapeError(ValueError):
    """Operand shapes are incompatible with an operation's shape rule."""


class UnknownOperationError(KeyError, ValueError):
    """An operation name is not in the registry; the message lists the valid names."""

    def __init__(self, name: str, valid: Sequence[str]) -> None:
        super().__init__(name)
        self.name = name
        self.valid = tuple(valid)

    def __str__(self) -> str:
        return f"unknown operation {self.name!r}; valid operations: {', '.join(self.valid)}"


# ----------------------------------------------------------------------------- shape rules


@dataclass(frozen=True)
class ShapeRule:
    """A named static shape function: ``rule(*shapes) -> output shape`` or :class:`ShapeError`.

    Every shape must have a bit axis (at least one dimension) and no empty axis; the
    wrapped ``infer`` function sees validated ``tuple[int, ...]`` shapes.
    """

    name: str
    infer: Callable[..., Shape]

    def __call__(self, *shapes: Sequence[int]) -> Shape:
        return self.infer(*(_checked_shape(s) for s in shapes))

    def __repr__(self) -> str:
        return f"ShapeRule({self.name})"


def _checked_shape(shape: Sequence[int]) -> Shape:
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise ShapeError("a 0-d value has no bit axis; expected shape (k, ...) with k in {1, B}")
    if min(shape) < 1:
        raise ShapeError(f"shape {shape} has an empty axis")
    return shape


def _bit_size(shapes: Sequence[Shape]) -> int:
    """Common bit-axis size: every axis 0 is 1 or the same B."""
    sizes = {s[0] for s in shapes} - {1}
    if len(sizes) > 1:
        shown = ", ".join(str(s) for s in shapes)
        raise ShapeError(f"bit axes differ in {shown}; each axis 0 must be 1 or the same B")
    return sizes.pop() if sizes else 1


def _elementwise(*shapes: Shape) -> Shape:
    """Output has the shape of the input (all inputs must have one same shape)."""
    if len(set(shapes)) != 1:
        raise ShapeError(f"elementwise operands need one shape, got {', '.join(map(str, shapes))}")
    return shapes[0]


def _reduce(shape: Shape) -> Shape:
    """Reduce every axis but the bit axis: ``(k, ...) -> (k,)``."""
    return (shape[0],)


def _reduce_per_sample(shape: Shape) -> Shape:
    """Reduce every axis but the bit and sample axes: ``(k, n, ...) -> (k, n)``.

    Axis 1 is the sample axis of the calibration-batch inputs (``A``, ``Ga``, ``D``); on
    weight-shaped values it is the output channel, so the same rule gives a value per
    channel. A value without axis 1 (a scalar per bit) has no samples to keep.
    """
    if len(shape) < 2:
        raise ShapeError(f"per-sample reduction of {shape}: no sample axis (axis 1) to keep")
    return shape[:2]


def _broadcast(*shapes: Shape) -> Shape:
    """Bit-axis-aware broadcasting.

    Axis 0 is aligned with axis 0 (sizes 1 or the same B); the remaining axes follow torch
    broadcasting, right-aligned, as if missing axes were inserted right after the bit axis.
    So a scalar per bit ``(B,)`` scales every element of its slot of a ``(B, C, H, W)``
    value, where plain torch broadcasting would align it with ``W``.
    """
    k = _bit_size(shapes)
    rank = max(len(s) for s in shapes)
    rests = [(1,) * (rank - len(s)) + s[1:] for s in shapes]
    out = [k]
    for axis, sizes in enumerate(zip(*rests, strict=True), start=1):
        big = set(sizes) - {1}
        if len(big) > 1:
            shown = ", ".join(map(str, shapes))
            raise ShapeError(f"shapes {shown} do not broadcast: sizes {sizes} at axis {axis}")
        out.append(big.pop() if big else 1)
    return tuple(out)


def _as_matrix(shape: Shape) -> tuple[int, int]:
    """(rows, cols) of one slot: rows = axis 1 (1 if absent), cols = product of the rest."""
    return (shape[1] if len(shape) > 1 else 1), math.prod(shape[2:])


def _matmul(x: Shape, y: Shape) -> Shape:
    """Per-slot ``X @ Y^T`` of the slots viewed as matrices: ``(k, rows_x, rows_y)``.

    Each slot of ``(k, d1, d2, ...)`` is viewed as a ``[d1, d2*...]`` matrix (a ``(k,)``
    scalar per bit as ``[1, 1]``, a ``(k, n)`` vector as ``[n, 1]``); the column counts must
    agree. For weights ``[Cout, Cin*kh*kw]`` this is the Gram-like ``W Wq^T``; for
    activations ``[N, C*H*W]`` it compares samples. Bit axes broadcast (1 or B).
    """
    k = _bit_size((x, y))
    (rows_x, cols_x), (rows_y, cols_y) = _as_matrix(x), _as_matrix(y)
    if cols_x != cols_y:
        raise ShapeError(
            f"matmul of {x} and {y}: slots are [{rows_x}, {cols_x}] and [{rows_y}, {cols_y}]"
            " matrices whose column counts differ"
        )
    return (k, rows_x, rows_y)


ELEMENTWISE = ShapeRule("elementwise", _elementwise)
REDUCE = ShapeRule("reduce", _reduce)
REDUCE_PER_SAMPLE = ShapeRule("reduce_per_sample", _reduce_per_sample)
BROADCAST = ShapeRule("broadcast", _broadcast)
MATMUL = ShapeRule("matmul", _matmul)


# ----------------------------------------------------------------------------- registry


class Kind(StrEnum):
    """How an operation treats the elements of a slot (all kinds keep slots independent)."""

    POINTWISE = "pointwise"  # each output element from the same-position input element(s)
    SLOTWISE = "slotwise"  # uses statistics of the whole slot (normalize, softmax, ...)
    REDUCE = "reduce"  # one value per slot, shape (k,)
    CONTRACT = "contract"  # sums products across slot elements (matmul)


_DEFAULT_KIND = {
    "elementwise": Kind.POINTWISE,
    "broadcast": Kind.POINTWISE,
    "reduce": Kind.REDUCE,
    "reduce_per_sample": Kind.REDUCE,
    "matmul": Kind.CONTRACT,
}


@dataclass(frozen=True)
class Op:
    """A registered operation.

    ``commutative``: ``f(x, y) == f(y, x)``. ``idempotent``: for unary ops
    ``f(f(x)) == f(x)``, for binary ops ``f(x, x) == x``. ``involution``: ``f(f(x)) == x``.
    These are mathematical identities, used to fold equivalent genomes. ``dangerous``: can
    return NaN/inf for finite inputs of ordinary magnitude (pole, domain error, fast growth);
    every op can still overflow near the float32 limits.
    """

    name: str
    arity: int
    fn: Callable[..., Tensor]
    shape_rule: ShapeRule
    kind: Kind
    doc: str
    commutative: bool = False
    idempotent: bool = False
    involution: bool = False
    dangerous: bool = False

    def output_shape(self, *shapes: Sequence[int]) -> Shape:
        """Static output shape for operand shapes; raises ShapeError or TypeError (arity)."""
        if len(shapes) != self.arity:
            raise TypeError(
                f"operation {self.name!r} takes {self.arity} operand(s), got {len(shapes)}"
            )
        return self.shape_rule(*shapes)


OPS: dict[str, Op] = {}


def _register(
    name: str,
    arity: int,
    shape: ShapeRule,
    kind: Kind | None,
    **flags: bool,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    if name in OPS:
        raise ValueError(f"operation {name!r} is already registered")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in OPS:
            raise ValueError(f"operation {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        if not doc:
            raise ValueError(f"operation {name!r} needs a one-line docstring")
        OPS[name] = Op(
            name=name,
            arity=arity,
            fn=fn,
            shape_rule=shape,
            kind=kind or _DEFAULT_KIND[shape.name],
            doc=doc[0],
            **flags,
        )
        return fn

    return decorator


def unary(
    name: str,
    *,
    shape: ShapeRule = ELEMENTWISE,
    kind: Kind | None = None,
    idempotent: bool = False,
    involution: bool = False,
    dangerous: bool = False,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering a one-operand operation under ``name``."""
    return _register(
        name, 1, shape, kind, idempotent=idempotent, involution=involution, dangerous=dangerous
    )


def binary(
    name: str,
    *,
    shape: ShapeRule = BROADCAST,
    kind: Kind | None = None,
    commutative: bool = False,
    idempotent: bool = False,
    dangerous: bool = False,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering a two-operand operation under ``name``."""
    return _register(
        name, 2, shape, kind, commutative=commutative, idempotent=idempotent, dangerous=dangerous
    )


def get_op(name: str) -> Op:
    """The registered operation called ``name``; raises UnknownOperationError."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise UnknownOperationError(name, sorted(OPS)) from None


def unary_ops() -> list[str]:
    """Names of the unary operations, sorted."""
    return sorted(name for name, op in OPS.items() if op.arity == 1)


def binary_ops() -> list[str]:
    """Names of the binary operations, sorted."""
    return sorted(name for name, op in OPS.items() if op.arity == 2)


def apply(name: str, *tensors: Tensor) -> Tensor:
    """Run operation ``name`` after checking operand count, types and the shape rule."""
    op = get_op(name)
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(
                f"operation {name!r} takes torch.Tensor operands, got {type(t).__name__}"
            )
    op.output_shape(*(t.shape for t in tensors))
    return op.fn(*tensors)


# ----------------------------------------------------------------------------- helpers


def _slots(x: Tensor) -> Tensor:
    """View ``(k, ...)`` as ``(k, n)``: one row per bit slot."""
    if x.ndim == 0:
        raise ShapeError("a 0-d value has no bit axis; expected shape (k, ...) with k in {1, B}")
    return x.reshape(x.shape[0], -1)


def _aligned(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Views of x and y with equal rank, missing axes inserted after the bit axis."""
    BROADCAST(x.shape, y.shape)
    rank = max(x.ndim, y.ndim)
    return tuple(t.reshape(t.shape[0], *(1,) * (rank - t.ndim), *t.shape[1:]) for t in (x, y))


def _zero_where(mask: Tensor, value: Tensor) -> Tensor:
    return torch.where(mask, torch.zeros_like(value), value)


# ----------------------------------------------------------------------------- unary: pointwise


@unary("no_op", idempotent=True)
def _no_op(x: Tensor) -> Tensor:
    """Identity: x."""
    return x


@unary("log", dangerous=True)
def _log(x: Tensor) -> Tensor:
    """Natural logarithm: log(x) (-inf at 0, NaN below)."""
    return torch.log(x)


@unary("abslog")
def _abslog(x: Tensor) -> Tensor:
    """Log of magnitude: log|x|, with 0 mapped to 0 as in EMQ."""
    return _zero_where(x == 0, torch.log(x.abs()))


@unary("abs", idempotent=True)
def _abs(x: Tensor) -> Tensor:
    """Absolute value: |x|."""
    return x.abs()


@unary("pow", dangerous=True)
def _pow(x: Tensor) -> Tensor:
    """Square: x^2."""
    return torch.square(x)


@unary("exp", dangerous=True)
def _exp(x: Tensor) -> Tensor:
    """Exponential: e^x."""
    return torch.exp(x)


@unary("exp2", dangerous=True)
def _exp2(x: Tensor) -> Tensor:
    """Power of two: 2^x (quantization step sizes scale as 2^-b)."""
    return torch.exp2(x)


@unary("relu", idempotent=True)
def _relu(x: Tensor) -> Tensor:
    """Rectifier: max(x, 0)."""
    return torch.relu(x)


@unary("invert", involution=True, dangerous=True)
def _invert(x: Tensor) -> Tensor:
    """Reciprocal: 1/x (inf at 0)."""
    return torch.reciprocal(x)


@unary("sigmoid")
def _sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid: 1/(1+e^-x)."""
    return torch.sigmoid(x)


@unary("tanh")
def _tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent: tanh(x)."""
    return torch.tanh(x)


@unary("sqrt", dangerous=True)
def _sqrt(x: Tensor) -> Tensor:
    """Square root: sqrt(x) (NaN below 0; EMQ's clamped form is sqrt(relu(x)))."""
    return torch.sqrt(x)


@unary("abssqrt")
def _abssqrt(x: Tensor) -> Tensor:
    """Square root of magnitude: sqrt|x|."""
    return torch.sqrt(x.abs())


@unary("revert", involution=True)
def _revert(x: Tensor) -> Tensor:
    """Negation: -x."""
    return torch.neg(x)


@unary("sign", idempotent=True)
def _sign(x: Tensor) -> Tensor:
    """Sign: -1, 0 or 1."""
    return torch.sign(x)


# ----------------------------------------------------------------------------- unary: per slot


@unary("normalize", kind=Kind.SLOTWISE, idempotent=True)
def _normalize(x: Tensor) -> Tensor:
    """Standardize per bit slot: (x - mean) / std (population std; constant slot -> 0)."""
    flat = _slots(x)
    std, mean = torch.std_mean(flat, dim=1, correction=0, keepdim=True)
    return _zero_where(std == 0, (flat - mean) / std).reshape(x.shape)


@unary("min_max_normalize", kind=Kind.SLOTWISE, idempotent=True)
def _min_max_normalize(x: Tensor) -> Tensor:
    """Rescale per bit slot to [0, 1]: (x - min) / (max - min) (constant slot -> 0)."""
    flat = _slots(x)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    return _zero_where(span == 0, (flat - low) / span).reshape(x.shape)


@unary("softmax", kind=Kind.SLOTWISE)
def _softmax(x: Tensor) -> Tensor:
    """Softmax per bit slot over all non-bit axes."""
    return torch.softmax(_slots(x), dim=1).reshape(x.shape)


@unary("logsoftmax", kind=Kind.SLOTWISE)
def _logsoftmax(x: Tensor) -> Tensor:
    """Log-softmax per bit slot over all non-bit axes."""
    return torch.log_softmax(_slots(x), dim=1).reshape(x.shape)


# ----------------------------------------------------------------------------- unary: reductions


@unary("frobenius_norm", shape=REDUCE, idempotent=True)
def _frobenius_norm(x: Tensor) -> Tensor:
    """Frobenius norm per bit slot: sqrt(sum x^2)."""
    return torch.linalg.vector_norm(_slots(x), dim=1)


@unary("sq_norm", shape=REDUCE, dangerous=True)
def _sq_norm(x: Tensor) -> Tensor:
    """Sum of squares per bit slot: sum x^2 (e.g. ||W - Q_b(W)||^2)."""
    return torch.square(_slots(x)).sum(dim=1)


@unary("normalized_sum", shape=REDUCE, idempotent=True)
def _normalized_sum(x: Tensor) -> Tensor:
    """Sum divided by element count per bit slot: sum x / n."""
    flat = _slots(x)
    return flat.sum(dim=1) / flat.shape[1]


@unary("l1_norm", shape=REDUCE, idempotent=True)
def _l1_norm(x: Tensor) -> Tensor:
    """Mean magnitude per bit slot: sum |x| / n."""
    flat = _slots(x)
    return flat.abs().sum(dim=1) / flat.shape[1]


@unary("sum", shape=REDUCE, idempotent=True)
def _sum(x: Tensor) -> Tensor:
    """Sum per bit slot: sum x (e.g. Tr(H) from a Hessian diagonal)."""
    return _slots(x).sum(dim=1)


@unary("to_mean_scalar", shape=REDUCE, idempotent=True)
def _to_mean_scalar(x: Tensor) -> Tensor:
    """Mean per bit slot."""
    return _slots(x).mean(dim=1)


@unary("to_std_scalar", shape=REDUCE)
def _to_std_scalar(x: Tensor) -> Tensor:
    """Population standard deviation per bit slot (0 for a single element)."""
    return torch.std(_slots(x), dim=1, correction=0)


@unary("max_abs", shape=REDUCE, idempotent=True)
def _max_abs(x: Tensor) -> Tensor:
    """Largest magnitude per bit slot: max |x| (the symmetric quantization range)."""
    return _slots(x).abs().amax(dim=1)


# ----------------------------------------------------------------------------- unary: per sample
# Output-space loss-change terms (NVIDIA ModelOpt's AutoQuantize, FIT): the first-order change
# of sample n's loss when a layer is quantized is sum_i Ga[n, i] * D[n, i]; its square summed
# over samples is the output-space Fisher term, sq_norm(sample_sum(mul(Ga, D))).


def _samples(x: Tensor) -> Tensor:
    """View ``(k, n, ...)`` as ``(k, n, m)``: one row per (bit slot, sample)."""
    if x.ndim < 2:
        raise ShapeError(f"per-sample reduction of {tuple(x.shape)}: no sample axis (axis 1)")
    return x.reshape(x.shape[0], x.shape[1], -1)


@unary("sample_sum", shape=REDUCE_PER_SAMPLE, idempotent=True)
def _sample_sum(x: Tensor) -> Tensor:
    """Sum per bit slot and sample over the other axes: sum_i x[k, n, i] -> (k, n)."""
    return _samples(x).sum(dim=2)


@unary("sample_mean", shape=REDUCE_PER_SAMPLE, idempotent=True)
def _sample_mean(x: Tensor) -> Tensor:
    """Mean per bit slot and sample over the other axes -> (k, n)."""
    return _samples(x).mean(dim=2)


@unary("sample_norm", shape=REDUCE_PER_SAMPLE, idempotent=True)
def _sample_norm(x: Tensor) -> Tensor:
    """L2 norm per bit slot and sample over the other axes: ||x[k, n]|| -> (k, n)."""
    return torch.linalg.vector_norm(_samples(x), dim=2)


@unary("sample_max_abs", shape=REDUCE_PER_SAMPLE, idempotent=True)
def _sample_max_abs(x: Tensor) -> Tensor:
    """Largest magnitude per bit slot and sample: max_i |x[k, n, i]| -> (k, n)."""
    return _samples(x).abs().amax(dim=2)


# ----------------------------------------------------------------------------- binary


@binary("add", commutative=True)
def _add(x: Tensor, y: Tensor) -> Tensor:
    """Sum: x + y."""
    x, y = _aligned(x, y)
    return torch.add(x, y)


@binary("sub")
def _sub(x: Tensor, y: Tensor) -> Tensor:
    """Difference: x - y."""
    x, y = _aligned(x, y)
    return torch.sub(x, y)


@binary("mul", commutative=True)
def _mul(x: Tensor, y: Tensor) -> Tensor:
    """Elementwise product: x * y."""
    x, y = _aligned(x, y)
    return torch.mul(x, y)


@binary("div", dangerous=True)
def _div(x: Tensor, y: Tensor) -> Tensor:
    """Elementwise quotient: x / y (inf or NaN where y = 0)."""
    x, y = _aligned(x, y)
    return torch.div(x, y)


@binary("max", commutative=True, idempotent=True)
def _max(x: Tensor, y: Tensor) -> Tensor:
    """Elementwise maximum: max(x, y)."""
    x, y = _aligned(x, y)
    return torch.maximum(x, y)


@binary("min", commutative=True, idempotent=True)
def _min(x: Tensor, y: Tensor) -> Tensor:
    """Elementwise minimum: min(x, y)."""
    x, y = _aligned(x, y)
    return torch.minimum(x, y)


@binary("matmul", shape=MATMUL)
def _matmul_op(x: Tensor, y: Tensor) -> Tensor:
    """Per bit slot matrix product X @ Y^T of slots viewed as [axis 1, rest] matrices."""
    MATMUL(x.shape, y.shape)  # raises ShapeError before any tensor math
    rows_x, cols = _as_matrix(tuple(x.shape))
    rows_y, _ = _as_matrix(tuple(y.shape))
    mx = x.reshape(x.shape[0], rows_x, cols)
    my = y.reshape(y.shape[0], rows_y, cols)
    return torch.matmul(mx, my.transpose(1, 2))
