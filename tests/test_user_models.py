"""Models outside the zoo: nn.MultiheadAttention rewritten with nn.Linear projections
(``benchmark.convert``), BatchNorms folded only where folding keeps the function, a user's
``module.path:factory`` found from the current folder, benched, scored and searched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from user_models import (
    OutOfOrderNet,
    PreActNet,
    SharedConvNet,
    TinyTransformer,
    TinyTransformerClones,
    WithUnusedHead,
    trained_mlp,
)

from benchmark.bench import Bench
from benchmark.convert import LinearMultiheadAttention, make_quantizable
from benchmark.data import load_split
from benchmark.factory import build_model
from benchmark.ptq import QuantSim, fold_bn
from benchmark.quantizers import quantizable_layers
from emq.allocate.result import CALIB_IMAGES, CALIB_SEED, training_subset
from emq.cli import main
from emq.deploy import export_allocation, onnx_logits
from primitives.inputs import InputSettings, compute_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def _attention_pair(batch_first: bool, kdim: int | None = None, bias: bool = True):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim,
                                bias=bias).eval()  # fmt: skip
    return mha, LinearMultiheadAttention.from_torch(mha).eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 12])
def test_rewritten_attention_computes_the_same_function(batch_first, kdim):
    mha, lin = _attention_pair(batch_first, kdim)
    n, lq, lk = 3, 5, 7
    shape = (
        (lambda length, e: (n, length, e)) if batch_first else (lambda length, e: (length, n, e))
    )
    q = torch.randn(*shape(lq, 16))
    k = torch.randn(*shape(lk, kdim or 16))
    v = torch.randn(*shape(lk, kdim or 16))
    pad = torch.zeros(n, lk, dtype=torch.bool)
    pad[0, -2:] = True
    float_mask = torch.randn(lq, lk)
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": float_mask},
                       {"attn_mask": float_mask > 1.0, "average_attn_weights": False}):  # fmt: skip
            ref, ref_w = mha(q, k, v, **kwargs)
            out, out_w = lin(q, k, v, **kwargs)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out_w, ref_w, rtol=1e-5, atol=1e-5)
        if kdim is None:  # causal self-attention, no weights asked for
            x = torch.randn(*shape(lq, 16))
            mask = nn.Transformer.generate_square_subsequent_mask(lq)
            ref, _ = mha(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)
            out, none = lin(x, x, x, attn_mask=None, is_causal=True, need_weights=False)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            assert none is None
    assert [type(m) for m in lin.children()] == [nn.Linear] * 4


def test_transformer_layers_are_rewritten_and_run_through_the_projections():
    model = TinyTransformer()
    converted = make_quantizable(model)
    assert converted is not model and any(
        isinstance(m, nn.MultiheadAttention) for m in model.modules()
    )  # the user's model is left as it was
    names = [n for n, _ in quantizable_layers(converted)]
    assert names[:5] == ["embed", "encoder.layers.0.self_attn.q_proj",
                         "encoder.layers.0.self_attn.k_proj", "encoder.layers.0.self_attn.v_proj",
                         "encoder.layers.0.self_attn.out_proj"]  # fmt: skip
    assert len(names) == 1 + 2 * 6 + 1
    calls = []  # the fused fast path would skip every projection's forward
    for _, m in quantizable_layers(converted):
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        converted(torch.randn(2, 1, 28, 28))
    assert len(calls) == len(names)
    plain = OutOfOrderNet()
    assert make_quantizable(plain) is plain  # nothing to rewrite: the model itself


def test_attention_with_key_value_bias_is_refused():
    model = nn.Sequential(nn.Flatten(1, 2))
    model.attn = nn.MultiheadAttention(28, 4, add_bias_kv=True, batch_first=True)
    with pytest.raises(ValueError, match="add_bias_kv"):
        make_quantizable(model)


def test_batchnorms_fold_only_where_the_function_is_kept():
    x = torch.randn(8, 1, 28, 28)
    for model, kept in ((OutOfOrderNet(), {"bn1", "bn2"}), (PreActNet(), {"bn1"})):
        folded = fold_bn(model, x)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        left = {n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
        assert left == kept  # bn3 (OutOfOrderNet), bn2 (PreActNet) follow their conv: folded
        unchecked = fold_bn(model)  # without a check input: folded by module order
        with torch.no_grad():
            assert not torch.allclose(unchecked(x), model(x), atol=1e-3)


@pytest.fixture(scope="module")
def test_images():
    x, y = load_split("test")
    return x[:200], y[:200]


@pytest.mark.parametrize(
    "factory", [TinyTransformer, TinyTransformerClones, PreActNet, OutOfOrderNet, SharedConvNet]
)
def test_user_architectures_quantize_and_export_like_the_simulator(factory, test_images):
    model = make_quantizable(factory())
    calib, _ = training_subset(0, CALIB_IMAGES, CALIB_SEED)
    sim = QuantSim(model, calib)
    x, _ = test_images
    n = sim.num_layers
    with torch.no_grad():
        fp = model(x).numpy()
    w, a = [(2, 3, 4, 8)[i % 4] for i in range(n)], [(4, 8)[i % 2] for i in range(n)]
    try:
        sim.set_config([8] * n, [8] * n)
        high = sim.forward(x).numpy()
        sim.set_config(w, a)
        ref = sim.forward(x).numpy()
    finally:
        sim.set_fp()
    # W8A8 is close to full precision; the mixed allocation is not
    assert np.abs(high - fp).max() < 0.05 * np.abs(fp).max()
    assert np.abs(ref - fp).max() > np.abs(high - fp).max()
    exported = export_allocation(sim, w, a, encodings=False)
    out = onnx_logits(exported.model, x)
    assert float((out.argmax(1) == ref.argmax(1)).mean()) >= 0.99
    assert np.abs(out - ref).mean() < 0.02 * np.abs(ref).mean()


def test_emq_score_takes_a_transformer_users_model(capsys):
    n = 14
    configs = ";".join(",".join([b] * n) for b in ("8", "4", "2"))
    code = main(["score", "--model", "user_models:TinyTransformer", "--batch", "16",
                 "--configs", configs, "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    scores = [row["score"] for row in json.loads(out)["scores"]]
    assert np.all(np.isfinite(scores)) and scores[0] > scores[1] > scores[2]
    built = build_model("user_models:TinyTransformer")
    assert not any(isinstance(m, nn.MultiheadAttention) for m in built.modules())


def test_a_factory_in_the_current_folder_is_found(tmp_path, monkeypatch):
    (tmp_path / "my_net_here.py").write_text(
        "from torch import nn\n\n"
        "def net():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_net_here", raising=False)
    model = build_model("my_net_here:net")
    assert [n for n, _ in quantizable_layers(model)] == ["1"]
    with pytest.raises(ValueError, match="cannot import module 'not_here'.*PYTHONPATH"):
        build_model("not_here:net")


def test_a_users_model_is_benched_scored_and_searched(tmp_path, capsys):
    """``emq bench build``, ``score --bench`` and ``evolve --bench`` on a factory model."""
    bench = tmp_path / "mlp.sqlite"
    code = main(["bench", "build", "--model", "user_models:trained_mlp", "--configs", "3",
                 "--test-images", "200", "--out", str(bench)])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert main(["bench", "info", str(bench), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "user_models:trained_mlp" and info["configs"] == 3 + 4
    assert info["fp_top1"] > 60 and info["top1_min"] < info["top1_max"]
    code = main(["score", "--model", "user_models:trained_mlp", "--bench", str(bench), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)["bench"]
    assert report["configs"] == 7 and np.isfinite(report["kendall"])
    run = tmp_path / "run"
    code = main(["evolve", "--bench", str(bench), "--heldout", "none", "--steps", "1",
                 "--population", "8", "--calib-images", "16", "--run", str(run)])  # fmt: skip
    assert code == 0 and (run / "best.json").is_file()
    capsys.readouterr()
    # other weights are refused by name, with what to do
    code = main(["score", "--model", "user_models:trained_mlp", "--bench", str(bench),
                 "--checkpoint", str(_other_weights(tmp_path))])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "weights differ" in err and "fixed seed" in err
    other, run2 = str(tmp_path / "other.pt"), str(tmp_path / "r2")
    code = main(["evolve", "--bench", str(bench), "--heldout", "none", "--steps", "1",
                 "--checkpoint", other, "--run", run2])  # fmt: skip
    assert code == 2 and "weights differ" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()  # the folder it created for nothing is gone


def _other_weights(tmp_path) -> str:
    state = {k: v + 0.01 for k, v in trained_mlp().state_dict().items()}
    torch.save(state, tmp_path / "other.pt")
    return tmp_path / "other.pt"


def test_a_bench_with_nothing_to_rank_is_refused(tmp_path, capsys):
    """An untrained model's bench: every configuration at the same top-1."""
    bench = tmp_path / "untrained.sqlite"
    code = main(["bench", "build", "--model", "user_models:PreActNet", "--configs", "2",
                 "--test-images", "100", "--out", str(bench)])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    code = main(["evolve", "--bench", str(bench), "--heldout", "none", "--steps", "1",
                 "--population", "8", "--run", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no proxy can rank them" in err and not (tmp_path / "r").exists()


def test_emq_train_trains_a_factory_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "linear_net.py").write_text(
        "from torch import nn\n\n"
        "def net():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "linear_net", raising=False)
    code = main(["train", "--model", "linear_net:net", "--epochs", "1", "--batch-size", "500"])
    assert code == 2 and "--out" in capsys.readouterr().err
    assert main(["train", "--model", "linear_net:net", "--epochs", "1", "--batch-size", "500",
                 "--out", "net.pt", "--json"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["model"] == "linear_net:net" and record["test_top1"] > 70
    model = build_model("linear_net:net", tmp_path / "net.pt")  # the checkpoint loads back
    x, y = load_split("test")
    with torch.no_grad():
        top1 = 100.0 * float((model(x).argmax(1) == y).float().mean())
    assert top1 == pytest.approx(record["test_top1"], abs=0.01)


@pytest.mark.parametrize(
    "name, layers",
    [("torch_vit", 26), ("convnext", 15), ("inception", 20), ("mixer", 18), ("squeezenet", 17)],
)
def test_shipped_example_model_matches_its_bench(name, layers, monkeypatch):
    """``examples/NAME.py``: its checkpoint is the one its bench measured, and the model as
    EMQ builds it (attention rewritten) keeps the FP accuracy recorded at training time."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.chdir(examples)  # found as a user's file in the current folder
    monkeypatch.delitem(sys.modules, name, raising=False)
    bench = Bench.open(examples / f"{name}.sqlite")
    model = build_model(f"{name}:make", examples / f"{name}.pt")
    bench.check_model(model)
    record = json.loads((examples / f"{name}.json").read_text())
    assert bench.model == f"{name}:make" and len(bench) >= 250
    assert bench.meta["test_images"] == 10000 and bench.num_layers == layers
    assert abs(bench.meta["fp_top1"] - record["test_top1"]) <= 0.05


def test_a_shared_layer_counts_every_call_and_an_unused_one_is_refused(capsys):
    from benchmark.ptq import layer_table

    table = {layer.name: layer.macs for layer in layer_table(SharedConvNet())}
    assert table["block"] == 2 * table["stem"] * 8  # two calls, 8 input channels vs. 1
    with pytest.raises(ValueError, match="'unused' is never called"):
        layer_table(WithUnusedHead())
    assert main(["score", "--model", "user_models:WithUnusedHead", "--configs", "8,8"]) == 2
    assert "never called" in capsys.readouterr().err


def test_a_sequence_first_layer_is_refused_by_name_and_its_macs_count_the_image():
    """A layer whose output's axis 0 is not the image (``nn.TransformerEncoderLayer``
    without ``batch_first``): the proxy inputs are per image along axis 0, so they are
    refused with the layer's name, never computed across images; its MACs count every
    output element of the one-image probe (the ILP once saw it as nearly free)."""
    from benchmark.ptq import layer_table

    model = build_model("user_models:SeqFirstTransformer")
    macs = {layer.name: layer.macs for layer in layer_table(model)}
    assert macs["embed"] == 28 * 16 * 28  # 28 rows of one image, 16 x 28 each
    x, y = load_split("train")
    with pytest.raises(ValueError, match="layer 'embed' returns .* axis 0 is not the image"):
        compute_inputs(model, x[:8], y[:8], InputSettings(names=("D", "Dz")))


def test_a_conv_with_its_own_forward_gets_the_output_change_its_forward_makes():
    """``D`` of a ``Conv2d`` subclass that transforms its weight (weight standardization) is
    the change of *its* output with the quantized weight, not of a plain convolution."""
    model = build_model("user_models:standardized_net")
    x, y = load_split("train")
    x = x[:8]
    inputs = compute_inputs(model, x, y[:8], InputSettings(names=("Wq", "D")))
    conv = model[0]
    call = torch.func.functional_call
    with torch.no_grad():
        for b in range(len(inputs.candidates)):
            q = inputs.tensors[0]["Wq"][b].to(conv.weight.dtype)
            real = call(conv, {"weight": q}, (x,)) - conv(x)
            torch.testing.assert_close(inputs.tensors[0]["D"][b], real, rtol=1e-4, atol=1e-5)
    plain = nn.functional.conv2d(x, inputs.tensors[0]["Wq"][0] - conv.weight.detach(), padding=1)
    assert not torch.allclose(plain, inputs.tensors[0]["D"][0], atol=1e-3)


def test_adaround_learns_on_the_output_of_a_conv_with_its_own_forward():
    """AdaRound's reconstruction target and candidates run through a ``Conv2d`` subclass's
    own forward (weight standardization), not a plain convolution of the weight."""
    from benchmark.adaround import layer_forward

    conv = build_model("user_models:standardized_net")[3]
    x = torch.randn(4, 8, 28, 28, generator=torch.Generator().manual_seed(0))
    w = conv.weight.detach()
    with torch.no_grad():
        torch.testing.assert_close(layer_forward(conv, x, w), conv(x))
        q = w.round(decimals=1)  # another weight, as a candidate rounding is
        torch.testing.assert_close(
            layer_forward(conv, x, q), torch.func.functional_call(conv, {"weight": q}, (x,))
        )
        assert not torch.allclose(layer_forward(conv, x, w), conv._conv_forward(x, w, conv.bias))


@pytest.mark.parametrize("factory", ["weight_norm_net", "old_weight_norm_net"])
def test_weight_norm_layers_are_baked_into_plain_weights_and_quantized(factory, capsys):
    """Weight norm (a parametrization, or the older pre-hook) is baked into the layer's
    weight: the same function, and a quantized weight is not overwritten by the hook."""
    import user_models

    original = getattr(user_models, factory)()
    model = build_model(f"user_models:{factory}")
    assert [type(m) for _, m in quantizable_layers(model)] == [nn.Conv2d, nn.Conv2d, nn.Linear]
    x, _ = load_split("test")
    x = x[:64]
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)
        sim = QuantSim(model, x)
        sim.set_config([2, 2, 8], [8, 8, 8])
        low = sim.forward(x)
        sim.set_fp()
        assert (low - original(x)).abs().max() > 1e-2  # W2 really changes the output
    assert main(["score", "--model", f"user_models:{factory}", "--configs", "4,4,8", "--batch",
                 "32"]) == 0  # fmt: skip
    capsys.readouterr()


def test_a_hand_written_layer_that_stays_in_float_is_named(capsys):
    """A conv written with its own ``nn.Parameter`` and ``F.conv2d`` is not a layer EMQ
    quantizes: the user is told which weight stays in full precision."""
    model = build_model("user_models:hand_written_net")
    assert [n for n, _ in quantizable_layers(model)] == ["4"]
    err = capsys.readouterr().err
    assert "emq: warning:" in err and "0.weight [8, 1, 3, 3] (HandWrittenConv)" in err
    build_model("user_models:PreActNet")  # only nn.Conv2d / nn.Linear weights: no warning
    assert "warning" not in capsys.readouterr().err
