"""An allocation as a deployable model: ONNX with QuantizeLinear/DequantizeLinear, and
AIMET encodings.

The exported graph computes what ``benchmark.ptq.QuantSim`` computes for the allocation:

* the BN-folded model (``QuantSim.folded``), traced by ``torch.onnx.export`` (TorchScript
  exporter, no constant folding, so every layer's weight keeps its ``<layer>.weight`` name);
* each quantizable layer's weight becomes integer levels (``int4`` for 2..4 bits, ``int8``
  for 5..8; opset 21) and a ``DequantizeLinear`` with the per-output-channel scales
  (``axis=0``, zero point 0) whose output keeps the name ``<layer>.weight``. The levels are
  ``QuantSim.quantized_weight / scale`` (nearest or AdaRound rounding alike), checked to
  dequantize to the simulator's weight bit for bit;
* each quantizable layer's input goes through ``QuantizeLinear``/``DequantizeLinear``
  (``uint8`` container, the calibrated per-tensor scale and zero point). Below 8 bits a
  ``Clip`` at the float bounds of the ``b``-bit grid, ``(0 - zp)·s`` and
  ``(2^b - 1 - zp)·s``, comes first: the ``uint8`` container alone would saturate at 255.

What differs from the simulator is float arithmetic only (``x / s`` in ``QuantizeLinear``
versus the simulator's ``x · (1/s)``, and the runtime's convolution summation order),
which moves a value across a rounding boundary rarely.

The encodings file follows AIMET's documented encoding format, version 0.6.1 (see
``aimet_encodings``).
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.adaround import AdaRoundSettings
from benchmark.factory import build_model
from benchmark.ptq import QuantSim
from benchmark.quantizers import act_qparams, mse_weight_scales, quantizable_layers, weight_qrange
from benchmark.schemas import read_json
from emq.allocate.result import CALIB_IMAGES, CALIB_SEED, training_subset
from emq.schemas import ALLOCATION_SCHEMA, check_document

OPSET = 21  # int4 DequantizeLinear (ONNX 1.16+, onnxruntime 1.18+)
TRACE_OPSET = 20  # the newest opset torch's TorchScript exporter writes; 20 -> 21 adds types
MAX_BITS = 8  # int8/uint8 containers; 16-bit QDQ is not offered
INT4_BITS = 4  # weights of at most this many bits are stored as int4
AIMET_VERSION = "0.6.1"
INSTALL_HINT = "pip install 'emq[deploy]'"


def require_deploy():
    """``(onnx, onnxruntime)``, or a clear error telling how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ValueError(f"{exc.name} is not installed: {INSTALL_HINT}") from None
    return onnx, onnxruntime


def load_allocation(path: Path | str) -> dict:
    """An allocation JSON written by ``emq allocate``: strict JSON within limits, validated
    against ``emq.schemas.ALLOCATION_SCHEMA``, its lists of one length."""
    source = f"allocation file {path} is not an allocation written by emq allocate"
    doc = check_document(read_json(path, "allocation file"), ALLOCATION_SCHEMA, source)
    n = len(doc["layer_names"])
    if len(doc["w_bits"]) != n or len(doc["a_bits"]) != n:
        raise ValueError(
            f"allocation file {path}: {n} layer names but {len(doc['w_bits'])} weight and "
            f"{len(doc['a_bits'])} activation bit-widths"
        )
    return doc


def check_exportable_bits(names: Sequence[str], w_bits: Sequence[int], a_bits: Sequence[int]):
    """Raise a clear error for the first bit-width the QDQ export cannot represent."""
    for name, w, a in zip(names, w_bits, a_bits, strict=True):
        for what, b in (("weight", w), ("activation", a)):
            if not 2 <= b <= MAX_BITS:
                raise ValueError(
                    f"layer {name!r}: {what} bit-width {b} cannot be exported: the ONNX "
                    f"QuantizeLinear/DequantizeLinear export holds 2..{MAX_BITS} bits"
                )


def check_layers(names: Sequence[str], have: Sequence[str], model: str) -> None:
    """The allocation's layer names must be the model's quantizable layers (``have``)."""
    names, have = list(names), list(have)
    if names == have:
        return
    if len(names) != len(have):
        raise ValueError(
            f"the allocation has {len(names)} layers but model {model} has {len(have)} "
            "quantizable layers: it was made for another model"
        )
    i = next(i for i, (a, b) in enumerate(zip(names, have, strict=True)) if a != b)
    raise ValueError(
        f"the allocation's layer {i} is {names[i]!r} but model {model}'s is {have[i]!r}: "
        "it was made for another model"
    )


@dataclass(frozen=True)
class LayerQuant:
    """The simulator's quantizer of one layer: integer weights and both sets of qparams."""

    name: str
    w_bits: int
    a_bits: int
    w_levels: np.ndarray  # int8 [C, ...], within +-(2^(w_bits-1) - 1)
    w_scale: np.ndarray  # float32 [C]
    a_scale: float  # float32 value
    a_zero_point: int

    @property
    def a_bounds(self) -> tuple[np.float32, np.float32]:
        """Float bounds of the activation grid, ``(0 - zp)·s`` and ``(2^b - 1 - zp)·s``."""
        s = np.float32(self.a_scale)
        qmax = 2**self.a_bits - 1
        return np.float32(-self.a_zero_point) * s, np.float32(qmax - self.a_zero_point) * s


def layer_quantizers(sim: QuantSim, w_bits: Sequence[int], a_bits: Sequence[int]):
    """``LayerQuant`` of every layer at the given bits, exactly as ``sim.set_config`` uses."""
    out = []
    for i, (name, _) in enumerate(sim.layers):
        wb, ab = int(w_bits[i]), int(a_bits[i])
        wq = sim.quantized_weight(i, wb)
        scale = mse_weight_scales(sim.fp_weights[i], wb, sim.clip_grid)
        s = scale.reshape(-1, *([1] * (wq.ndim - 1)))
        levels = torch.round(wq / s)
        qmax = weight_qrange(wb)
        if not torch.equal(levels * s, wq) or levels.abs().max() > qmax:
            raise ValueError(
                f"layer {name!r}: the simulator's {wb}-bit weight is not on its per-channel "
                "grid; cannot export it as integer levels"
            )
        a_scale, zp = act_qparams(*sim.act_ranges[i], ab)
        out.append(
            LayerQuant(
                name, wb, ab, levels.to(torch.int8).numpy(), scale.numpy().astype(np.float32),
                a_scale, zp,
            )
        )  # fmt: skip
    return out


def trace_onnx(sim: QuantSim):
    """The simulator's BN-folded full-precision model as an ONNX ``ModelProto``."""
    onnx, _ = require_deploy()
    folded = copy.deepcopy(sim.folded).eval()
    layers = dict(folded.named_modules())
    with torch.no_grad():
        for (name, _), w in zip(sim.layers, sim.fp_weights, strict=True):
            layers[name]._forward_pre_hooks.clear()  # the simulator's activation quantizers
            layers[name].weight.copy_(w)
    buf = io.BytesIO()
    shape = (1, *sim.calib.shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        try:
            torch.onnx.export(
                folded, torch.zeros(shape), buf, dynamo=False, opset_version=TRACE_OPSET,
                do_constant_folding=False, input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - any tracing failure: the architecture
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"{type(sim.model).__name__} cannot be exported to ONNX: {first}"
            ) from None
    return _unshare_initializers(onnx.load_from_string(buf.getvalue()))


def _unshare_initializers(proto):
    """``proto`` with each initializer the exporter shared through ``Identity`` nodes copied.

    The exporter merges initializers of equal value (two layers with equal weights, as in a
    freshly cloned transformer stack) and feeds the second layer through an ``Identity``;
    each layer needs its own weight to carry its own bits.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    for node in nodes:
        if node.op_type == "Identity" and node.input[0] in inits:
            twin = graph.initializer.add()
            twin.CopyFrom(inits[node.input[0]])
            twin.name = node.output[0]
            graph.node.remove(node)
    return proto


def _layer_nodes(graph, weight: str) -> list[tuple[int, str]]:
    """``(node index, data input)`` of each Conv/Gemm/MatMul computing with ``weight``.

    The weight may reach the node through ``Transpose`` (``nn.Linear`` on 3-d inputs).
    """
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    found, todo = [], [weight]
    while todo:
        tensor = todo.pop()
        for i in consumers.get(tensor, []):
            node = graph.node[i]
            if node.op_type == "Transpose":
                todo.append(node.output[0])
            elif node.op_type in ("Conv", "Gemm") and list(node.input).index(tensor) == 1:
                found.append((i, node.input[0]))
            elif node.op_type == "MatMul" and list(node.input).index(tensor) == 1:
                found.append((i, node.input[0]))
            else:
                raise ValueError(
                    f"weight {weight!r} feeds a {node.op_type} node; expected Conv, Gemm or MatMul"
                )
    return found


def _activation_quantizer(graph, q: LayerQuant, tag: str, data: str) -> list:
    """``[Clip →] QuantizeLinear → DequantizeLinear`` nodes of one layer input; their
    constants are added to ``graph``'s initializers."""
    from onnx import helper, numpy_helper

    def const(suffix: str, value, dtype) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), tag + suffix))
        return tag + suffix

    scale = const(".input_scale", q.a_scale, np.float32)
    zero = const(".input_zero_point", q.a_zero_point, np.uint8)
    nodes, src = [], data

    def add(op: str, inputs: list[str], output: str) -> None:
        nodes.append(helper.make_node(op, inputs, [f"{tag}.{output}"], name=f"{tag}.{op}"))

    if q.a_bits < 8:  # the uint8 container saturates at 255, not at 2^b - 1
        lo, hi = q.a_bounds
        bounds = [const(".input_min", lo, np.float32), const(".input_max", hi, np.float32)]
        add("Clip", [src, *bounds], "input_clipped")
        src = nodes[-1].output[0]
    add("QuantizeLinear", [src, scale, zero], "input_quantized")
    add("DequantizeLinear", [nodes[-1].output[0], scale, zero], "input_dequantized")
    return nodes


def _separate_bias(node, inits: dict, tag: str, weight_ndim: int):
    """Move a Conv/Gemm bias into an ``Add`` after the node; returns that node (or None).

    onnxruntime (1.20+, graph optimization level basic and up) rewrites a float bias next to
    DequantizeLinear inputs as int32 at scale ``s_x·s_w`` ("WeightBiasQuantization"): coarse
    at 2..4-bit activations, it changed 4.6 % of ResNet-20's W8A4 predictions on 500 images.
    A separate ``Add`` keeps the simulator's float bias under every optimization level.
    """
    from onnx import helper

    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return None
    bias = inits.get(node.input[2])
    # a layer called more than once shares its bias: the first call already reshaped it
    shared = (bias is not None and node.op_type == "Conv" and len(bias.dims) == weight_ndim - 1
              and all(d == 1 for d in bias.dims[1:]))  # fmt: skip
    if bias is None or (len(bias.dims) != 1 and not shared):
        raise ValueError(f"layer {tag!r}: its bias is not a constant vector of the graph")
    if node.op_type == "Conv" and not shared:  # [C] -> [C, 1, 1, ...] over [N, C, H, W, ...]
        bias.dims.extend([1] * (weight_ndim - 2))
    out = node.output[0]
    del node.input[2]
    node.output[0] = f"{tag}.output_without_bias"
    return helper.make_node("Add", [node.output[0], bias.name], [out], name=f"{tag}.bias_add")


def quantize_graph(model, quants: Sequence[LayerQuant]):
    """Insert the weight DequantizeLinear and activation Clip/QDQ of every layer (in place)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weight_nodes, inserts, after = [], {}, {}  # node index -> nodes to put before / after it
    for q in quants:
        weight = f"{q.name}.weight"
        if weight not in inits:
            raise ValueError(f"layer {q.name!r}: its weight is not a tensor of the traced graph")
        targets = _layer_nodes(graph, weight)
        if not targets:
            raise ValueError(f"layer {q.name!r}: no Conv/Gemm/MatMul uses its weight")
        graph.initializer.remove(inits[weight])
        wtype = TensorProto.INT4 if q.w_bits <= INT4_BITS else TensorProto.INT8
        levels = helper.make_tensor(
            f"{weight}_quantized", wtype, q.w_levels.shape, q.w_levels.flatten().tolist()
        )
        zero = helper.make_tensor(
            f"{weight}_zero_point", wtype, [len(q.w_scale)], [0] * len(q.w_scale)
        )
        scale = numpy_helper.from_array(q.w_scale, f"{weight}_scale")
        graph.initializer.extend([levels, zero, scale])
        weight_nodes.append(
            helper.make_node(
                "DequantizeLinear", [levels.name, scale.name, zero.name], [weight], axis=0,
                name=f"{weight}_dequantize",
            )
        )  # fmt: skip
        for k, (index, data) in enumerate(targets):
            tag = q.name if k == 0 else f"{q.name}#{k}"  # a layer called more than once
            chain = _activation_quantizer(graph, q, tag, data)
            graph.node[index].input[0] = chain[-1].output[0]
            inserts.setdefault(index, []).extend(chain)
            bias_add = _separate_bias(graph.node[index], inits, tag, q.w_levels.ndim)
            if bias_add is not None:
                after[index] = bias_add
    nodes = list(weight_nodes)
    for i, node in enumerate(graph.node):
        nodes.extend(inserts.get(i, []))
        nodes.append(node)
        if i in after:
            nodes.append(after[i])
    del graph.node[:]
    graph.node.extend(nodes)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = OPSET
    onnx.checker.check_model(model)
    return model


def activation_tensors(model, quants: Sequence[LayerQuant]) -> dict[str, str]:
    """Layer name -> the float tensor its input quantizer reads, in the quantized graph."""
    out = {}
    producers = {o: n for n in model.graph.node for o in n.output}
    for q in quants:
        node = producers[f"{q.name}.input_quantized"]
        src = node.input[0]
        if src == f"{q.name}.input_clipped":
            src = producers[src].input[0]
        out[q.name] = src
    return out


def aimet_encodings(quants: Sequence[LayerQuant], act_tensors: dict[str, str]) -> dict:
    """The allocation as AIMET encodings (documented format version 0.6.1).

    ``param_encodings`` are keyed by ``<layer>.weight`` (one entry per output channel:
    symmetric, narrow range ``[-(2^(b-1)-1), 2^(b-1)-1]``, i.e. AIMET's strict-symmetric
    convention: ``offset = -(2^(b-1)-1)``, ``min = offset·scale``, ``max = -min``).
    ``activation_encodings`` are keyed by the ONNX tensor each layer's input quantizer
    reads (AIMET: ``offset = -zero_point``, ``min = offset·scale``,
    ``max = (2^b - 1 + offset)·scale``). AIMET holds one encoding per tensor, so layers
    reading the same tensor must share its activation bit-width.
    """
    acts: dict[str, list[dict]] = {}
    owner: dict[str, str] = {}
    params = {}
    for q in quants:
        lo, hi = q.a_bounds
        enc = [{
            "bitwidth": q.a_bits, "dtype": "int", "is_symmetric": "False",
            "max": float(hi), "min": float(lo), "offset": -q.a_zero_point,
            "scale": float(q.a_scale),
        }]  # fmt: skip
        tensor = act_tensors[q.name]
        if tensor in acts and acts[tensor] != enc:
            raise ValueError(
                f"layers {owner[tensor]!r} and {q.name!r} quantize the same tensor "
                f"{tensor!r} at activation bits {acts[tensor][0]['bitwidth']} and {q.a_bits}; "
                "AIMET encodings hold one encoding per tensor: put them in one quantizer group"
            )
        owner.setdefault(tensor, q.name)
        acts[tensor] = enc
        qmax = weight_qrange(q.w_bits)
        params[f"{q.name}.weight"] = [
            {
                "bitwidth": q.w_bits, "dtype": "int", "is_symmetric": "True",
                "max": float(np.float32(qmax) * s), "min": float(np.float32(-qmax) * s),
                "offset": -qmax, "scale": float(s),
            }
            for s in q.w_scale
        ]  # fmt: skip
    return {
        "version": AIMET_VERSION,
        "activation_encodings": acts,
        "param_encodings": params,
        "quantizer_args": {
            "activation_bitwidth": max(q.a_bits for q in quants),
            "dtype": "int",
            "is_symmetric": "True",
            "param_bitwidth": max(q.w_bits for q in quants),
            "per_channel_quantization": "True",
            "quant_scheme": "post_training_tf",
        },
    }


def check_output_path(path: Path | str, what: str, created: Path | None = None) -> Path:
    """``path`` as a ``Path`` whose folder exists, or is ``created`` by the command before it
    writes (clear error otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path")
    if created is not None and path.parent.resolve() == Path(created).resolve():
        return path
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{what} {path}: folder {path.parent} does not exist")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Exported:
    """An allocation's quantized ONNX model, its encodings and the per-layer quantizers."""

    model: object  # onnx.ModelProto
    encodings: dict | None  # None when not asked for
    quantizers: list[LayerQuant]


def export_allocation(
    sim: QuantSim,
    w_bits: Sequence[int],
    a_bits: Sequence[int],
    metadata: dict[str, str] | None = None,
    encodings: bool = True,
) -> Exported:
    """The QDQ ONNX model (and AIMET encodings) of one configuration of ``sim``."""
    require_deploy()
    names = [n for n, _ in sim.layers]
    check_exportable_bits(names, w_bits, a_bits)
    quants = layer_quantizers(sim, w_bits, a_bits)
    model = quantize_graph(trace_onnx(sim), quants)
    model.producer_name = "emq"
    meta = {"emq.input": "images normalized as benchmark.data.load_split, [N, 1, 28, 28] "
            "float32", "emq.bits": ",".join(f"W{q.w_bits}A{q.a_bits}" for q in quants),
            **(metadata or {})}  # fmt: skip
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=str(value))
    enc = aimet_encodings(quants, activation_tensors(model, quants)) if encodings else None
    return Exported(model, enc, quants)


def save_exported(exported: Exported, onnx_path: Path | None, encodings_path: Path | None):
    """Write the ONNX model and/or the encodings JSON, each atomically."""
    if onnx_path is not None:
        write_atomic(onnx_path, exported.model.SerializeToString())
    if encodings_path is not None:
        text = json.dumps(exported.encodings, indent=2) + "\n"
        write_atomic(encodings_path, text.encode())


def allocation_simulator(doc: dict, checkpoint: Path | str | None = None) -> QuantSim:
    """The simulator ``emq allocate`` measured an allocation with: its model, checkpoint and
    rounding, calibrated on the bench's calibration batch; its layers checked."""
    rounding = doc.get("rounding", "nearest")
    adaround = doc.get("adaround")
    model = build_model(doc["model"], checkpoint or doc.get("checkpoint"))
    check_layers(doc["layer_names"], [n for n, _ in quantizable_layers(model)], doc["model"])
    calib, _ = training_subset(0, CALIB_IMAGES, CALIB_SEED)
    return QuantSim(
        model, calib, rounding=rounding,
        adaround=AdaRoundSettings(**adaround) if rounding == "adaround" and adaround else None,
    )  # fmt: skip


def export_allocation_file(
    allocation: Path | str,
    onnx_path: Path | str | None,
    encodings_path: Path | str | None = None,
    checkpoint: Path | str | None = None,
) -> Exported:
    """``emq export-model``: an allocation JSON of ``emq allocate`` to ONNX and encodings.

    The simulator is rebuilt with the allocation's settings (model, checkpoint, rounding,
    the bench's calibration batch), so the files reproduce the top-1 ``emq allocate``
    printed. Nothing is written unless every step succeeds.
    """
    require_deploy()
    if onnx_path is None and encodings_path is None:
        raise ValueError("nothing to write: give --out and/or --encodings")
    onnx_path = None if onnx_path is None else check_output_path(onnx_path, "--out")
    encodings_path = (
        None if encodings_path is None else check_output_path(encodings_path, "--encodings")
    )
    if onnx_path is not None and encodings_path is not None:
        if onnx_path.resolve() == encodings_path.resolve():
            raise ValueError(f"--out and --encodings are the same file {onnx_path}")
    doc = load_allocation(allocation)
    check_exportable_bits(doc["layer_names"], doc["w_bits"], doc["a_bits"])
    sim = allocation_simulator(doc, checkpoint)
    exported = export_allocation(
        sim, doc["w_bits"], doc["a_bits"],
        metadata={"emq.allocation": Path(allocation).name, "emq.model": doc["model"],
                  "emq.rounding": sim.rounding},
        encodings=encodings_path is not None,
    )  # fmt: skip
    save_exported(exported, onnx_path, encodings_path)
    return exported


def onnx_logits(model, x: torch.Tensor, batch: int = 500, threads: int = 1) -> np.ndarray:
    """Logits of an ONNX model (``ModelProto`` or path) in onnxruntime, batched.

    Runs the QDQ model as written, dequantize + float kernels: ONNX Runtime's QDQ fusions
    (on by default) swap some DequantizeLinear + MatMul/Gemm pairs for integer kernels
    (MatMulIntegerToFloat, QGemm) that are not the model's arithmetic and differ by CPU (on
    an AVX2 machine without VNNI they agreed with the simulator on 92-97.5 % of 200 images
    of small test models, where the unfused model agrees on all).
    """
    _, ort = require_deploy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    data = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    xs = x.numpy()
    return np.concatenate(
        [session.run(None, {"input": xs[i : i + batch]})[0] for i in range(0, len(xs), batch)]
    )
