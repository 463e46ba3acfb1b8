"""Tests for ``emq.deploy`` (``emq export-model``, ``emq allocate --export-onnx``): the QDQ
ONNX model run in onnxruntime against the PTQ simulator, the AIMET encodings, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402

from benchmark.data import load_split  # noqa: E402
from benchmark.models import load_model  # noqa: E402
from benchmark.ptq import QuantSim  # noqa: E402
from benchmark.quantizers import act_qparams, mse_weight_scales, weight_qrange  # noqa: E402
from emq.allocate.result import CALIB_IMAGES, CALIB_SEED, training_subset  # noqa: E402
from emq.cli import main  # noqa: E402
from emq.deploy import export_allocation, onnx_logits  # noqa: E402

IMAGES = 500  # test images compared per model (the README's figure uses all 10,000)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_split("test")
    return x[:IMAGES], y[:IMAGES]


def simulator(model: str, rounding: str = "nearest") -> QuantSim:
    """The simulator ``emq allocate`` measures with (the bench's calibration batch)."""
    calib, _ = training_subset(0, CALIB_IMAGES, CALIB_SEED)
    return QuantSim(load_model(model), calib, rounding=rounding)


def mixed_bits(n: int) -> tuple[list[int], list[int]]:
    """Weights cycling 2/3/4/8 bits, activations 4/8 bits."""
    return [(2, 3, 4, 8)[i % 4] for i in range(n)], [(4, 8)[i % 2] for i in range(n)]


def write_allocation(path: Path, model: str, sim: QuantSim, w, a, **extra) -> Path:
    doc = {"method": "ilp", "scorer": "bparams", "layer_names": [n for n, _ in sim.layers],
           "w_bits": list(w), "a_bits": list(a), "model": model, **extra}  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sim_logits(sim: QuantSim, x: torch.Tensor, w, a) -> np.ndarray:
    try:
        sim.set_config(w, a)
        return sim.forward(x).numpy()
    finally:
        sim.set_fp()


def assert_agrees(sim: QuantSim, model, x, y, w, a, min_agreement: float = 0.996) -> None:
    """onnxruntime's predictions are the simulator's (float noise may flip 2 of 500)."""
    ref, out = sim_logits(sim, x, w, a), onnx_logits(model, x)
    agree = float((ref.argmax(1) == out.argmax(1)).mean())
    assert agree >= min_agreement
    top1 = [float((z.argmax(1) == y.numpy()).mean()) for z in (ref, out)]
    assert abs(top1[0] - top1[1]) <= 1.0 - min_agreement


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """ResNet-20 at a mixed W2/3/4/8 A4/8 allocation, exported by ``emq export-model``."""
    folder = tmp_path_factory.mktemp("resnet")
    sim = simulator("resnet20")
    w, a = mixed_bits(sim.num_layers)
    alloc = write_allocation(folder / "alloc.json", "resnet20", sim, w, a)
    out, enc = folder / "model.onnx", folder / "encodings.json"
    code = main(["export-model", "--allocation", str(alloc), "--out", str(out),
                 "--encodings", str(enc)])  # fmt: skip
    assert code == 0
    return {"sim": sim, "w": w, "a": a, "alloc": alloc, "onnx": out, "encodings": enc}


def test_onnx_predictions_match_the_simulator(resnet, images):
    assert_agrees(resnet["sim"], resnet["onnx"], *images, resnet["w"], resnet["a"])


def test_weights_are_integer_levels_that_dequantize_to_the_simulators(resnet):
    sim, model = resnet["sim"], onnx.load(resnet["onnx"])
    inits = {t.name: t for t in model.graph.initializer}
    ops = {n.name: n for n in model.graph.node}
    assert model.opset_import[0].version == 21
    for i, (name, _) in enumerate(sim.layers):
        bits = resnet["w"][i]
        levels = inits[f"{name}.weight_quantized"]
        assert levels.data_type == (TensorProto.INT4 if bits <= 4 else TensorProto.INT8)
        q = numpy_helper.to_array(levels).astype(np.float32)
        assert np.abs(q).max() <= weight_qrange(bits)
        scale = numpy_helper.to_array(inits[f"{name}.weight_scale"])
        dq = q * scale.reshape(-1, *([1] * (q.ndim - 1)))
        assert np.array_equal(dq, sim.quantized_weight(i, bits).numpy())  # bit for bit
        node = ops[f"{name}.weight_dequantize"]
        assert node.op_type == "DequantizeLinear" and node.output[0] == f"{name}.weight"
        # a Clip at the b-bit grid's float bounds exactly when the uint8 container is wider
        assert (f"{name}.Clip" in ops) == (resnet["a"][i] < 8)
        assert f"{name}.QuantizeLinear" in ops and f"{name}.DequantizeLinear" in ops


def test_encodings_hold_the_allocation_and_the_simulators_scales(resnet):
    sim, enc = resnet["sim"], json.loads(resnet["encodings"].read_text())
    assert enc["version"] == "0.6.1"
    params, acts = enc["param_encodings"], enc["activation_encodings"]
    assert sorted(params) == sorted(f"{n}.weight" for n, _ in sim.layers)
    assert len(acts) == sim.num_layers  # no two ResNet-20 layers read the same tensor
    act_by_scale = {(e[0]["scale"], e[0]["offset"], e[0]["bitwidth"]) for e in acts.values()}
    for i, (name, _) in enumerate(sim.layers):
        wb, ab = resnet["w"][i], resnet["a"][i]
        entries = params[f"{name}.weight"]
        scales = mse_weight_scales(sim.fp_weights[i], wb, sim.clip_grid).numpy()
        assert len(entries) == len(scales)  # one per output channel
        assert [e["bitwidth"] for e in entries] == [wb] * len(scales)
        assert np.array_equal(np.float32([e["scale"] for e in entries]), scales)
        assert {e["offset"] for e in entries} == {-weight_qrange(wb)}
        assert all(e["is_symmetric"] == "True" and e["dtype"] == "int" for e in entries)
        scale, zp = act_qparams(*sim.act_ranges[i], ab)
        assert (scale, -zp, ab) in act_by_scale
    first = acts["input"][0]  # the first conv reads the model input
    assert first["is_symmetric"] == "False" and first["bitwidth"] == resnet["a"][0]
    levels = 2 ** first["bitwidth"] - 1
    assert first["min"] == pytest.approx(first["offset"] * first["scale"])
    assert first["max"] == pytest.approx((levels + first["offset"]) * first["scale"])


@pytest.mark.parametrize(
    "model", ["mobilenetv2", "vgg", "resnext", "shufflenetv2", "efficientnet", "densenet", "vit"]
)
def test_every_zoo_model_exports_and_agrees(model, images):
    sim = simulator(model)
    w, a = mixed_bits(sim.num_layers)
    exported = export_allocation(sim, w, a, encodings=False)
    x, y = images
    assert_agrees(sim, exported.model, x[:200], y[:200], w, a, min_agreement=0.99)


def test_adaround_allocation_exports_its_learned_rounding(tmp_path, images):
    sim = simulator("resnet20", "adaround")  # the shipped AdaRound cache: nothing to learn
    w, a = [4] * sim.num_layers, [8] * sim.num_layers
    alloc = write_allocation(tmp_path / "a.json", "resnet20", sim, w, a, rounding="adaround")
    out = tmp_path / "m.onnx"
    assert main(["export-model", "--allocation", str(alloc), "--out", str(out)]) == 0
    inits = {t.name: t for t in onnx.load(out).graph.initializer}
    name = sim.layers[1][0]
    q = numpy_helper.to_array(inits[f"{name}.weight_quantized"]).astype(np.float32)
    s = numpy_helper.to_array(inits[f"{name}.weight_scale"]).reshape(-1, 1, 1, 1)
    assert np.array_equal(q * s, sim.quantized_weight(1, 4).numpy())
    assert not np.array_equal(q * s, simulator("resnet20").quantized_weight(1, 4).numpy())
    assert_agrees(sim, out, *images, w, a)


def test_allocate_exports_its_answer(tmp_path, capsys):
    out = tmp_path / "alloc" / "tiny.onnx"  # in the --out folder allocate makes
    enc = tmp_path / "tiny.json"
    argv = ["allocate", "--model", "allocate_tiny:tiny_net", "--method", "ilp", "--scorer",
            "bparams", "--budget-bops", "0.5", "--out", str(tmp_path / "alloc"),
            "--export-onnx", str(out), "--encodings", str(enc)]  # fmt: skip
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and f"onnx            {out}" in stdout
    doc = json.loads(next((tmp_path / "alloc").glob("*.json")).read_text())
    assert doc["rounding"] == "nearest"
    model = onnx.load(out)
    dq = [n for n in model.graph.node if n.name.endswith(".weight_dequantize")]
    assert len(dq) == len(doc["layer_names"]) == 3
    assert sorted(json.loads(enc.read_text())["param_encodings"]) == sorted(
        f"{n}.weight" for n in doc["layer_names"]
    )


# ------------------------------------------------------------------ bad input


def assert_refused(code: int, err: str, needle: str, folder: Path, before: set) -> None:
    """Exit 2, one ``emq: error:`` line naming the problem, no new file (not even a temp)."""
    assert code == 2
    assert err.startswith("emq: error:") and needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert set(folder.iterdir()) == before


def export(alloc: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run(["export-model", "--allocation", str(alloc), "--out", str(out), *extra], capsys)


def test_allocation_of_another_model_is_refused(resnet, tmp_path, capsys):
    doc = json.loads(resnet["alloc"].read_text())
    other = tmp_path / "vgg.json"
    other.write_text(json.dumps({**doc, "model": "vgg"}))  # 20 layer names, VGG has 8
    before = set(tmp_path.iterdir())
    code, _, err = export(other, tmp_path / "m.onnx", capsys, "--encodings", str(tmp_path / "e"))
    assert_refused(code, err, "another model", tmp_path, before)
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps({**doc, "layer_names": ["conv0", *doc["layer_names"][1:]]}))
    before = set(tmp_path.iterdir())
    code, _, err = export(renamed, tmp_path / "m.onnx", capsys)
    assert_refused(code, err, "'conv0'", tmp_path, before)


def test_bits_the_export_cannot_hold_are_refused(resnet, tmp_path, capsys):
    doc = json.loads(resnet["alloc"].read_text())
    for key, bad in (("w_bits", 16), ("a_bits", 12)):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({**doc, key: [bad, *doc[key][1:]]}))
        before = set(tmp_path.iterdir())
        code, _, err = export(path, tmp_path / "m.onnx", capsys)
        assert_refused(code, err, f"bit-width {bad} cannot be exported", tmp_path, before)


def test_missing_output_folder_and_bad_files_are_refused(resnet, tmp_path, capsys):
    before = set(tmp_path.iterdir())
    code, _, err = export(resnet["alloc"], tmp_path / "no" / "m.onnx", capsys)
    assert_refused(code, err, "does not exist", tmp_path, before)
    code, _, err = export(tmp_path / "none.json", tmp_path / "m.onnx", capsys)
    assert_refused(code, err, "does not exist", tmp_path, before)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "resnet20", "layer_names": ["a"], "w_bits": ["x"]}))
    before = set(tmp_path.iterdir())
    code, _, err = export(bad, tmp_path / "m.onnx", capsys)
    assert_refused(code, err, "not an allocation", tmp_path, before)


def test_allocate_checks_the_export_path_before_allocating(tmp_path, capsys):
    argv = ["allocate", "--model", "resnet20", "--method", "ilp", "--scorer", "bparams",
            "--budget-bops", "0.5", "--out", str(tmp_path / "alloc"),
            "--export-onnx", str(tmp_path / "no" / "m.onnx")]  # fmt: skip
    before = set(tmp_path.iterdir())
    code, _, err = run(argv, capsys)
    assert_refused(code, err, "does not exist", tmp_path, before)


def test_shared_tensor_at_two_activation_widths_has_no_aimet_encoding(tmp_path, capsys):
    sim = simulator("resnext")  # its first block's body and shortcut read the same tensor
    w, a = mixed_bits(sim.num_layers)
    alloc = write_allocation(tmp_path / "a.json", "resnext", sim, w, a)
    before = set(tmp_path.iterdir())
    code, _, err = export(alloc, tmp_path / "m.onnx", capsys, "--encodings", str(tmp_path / "e"))
    assert_refused(code, err, "one quantizer group", tmp_path, before)


def test_missing_onnxruntime_says_how_to_install(resnet, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a missing package raises
    before = set(tmp_path.iterdir())
    code, _, err = export(resnet["alloc"], tmp_path / "m.onnx", capsys)
    assert_refused(code, err, "pip install 'emq[deploy]'", tmp_path, before)
