"""Tests for benchmark.ptq: fake quantizers, MSE clipping, BN folding, MACs/BOPs, QuantSim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.models import MODELS
from benchmark.ptq import QuantSim, bops, fold_bn, layer_table, relative_bops
from benchmark.quantizers import (
    act_qparams,
    fake_quant_per_channel,
    fake_quant_per_tensor,
    mse_weight_scales,
    quantizable_layers,
    quantize_weight,
    state_fingerprint,
    weight_qrange,
)
from benchmark.train import evaluate

BITS = (2, 3, 4, 8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def channel_mse(w: torch.Tensor, scales: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-output-channel squared error of fake quantization at ``scales``."""
    err = (fake_quant_per_channel(w, scales, qmax) - w) ** 2
    return err.reshape(w.shape[0], -1).sum(1)


# ---------------------------------------------------------------- fake quantizers


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 64), (32, 1, 3, 3)])
def test_fake_quant_per_channel_matches_torch(bits, shape):
    qmax = weight_qrange(bits)
    for seed in range(5):
        g = gen(seed)
        spread = torch.rand(shape[0], *[1] * (len(shape) - 1), generator=g)
        w = torch.randn(shape, generator=g) * spread * 3
        ratio = 0.3 + 0.7 * torch.rand(shape[0], generator=g)
        scale = ratio * w.reshape(shape[0], -1).abs().amax(1) / qmax
        ours = fake_quant_per_channel(w, scale, qmax)
        ref = torch.fake_quantize_per_channel_affine(
            w, scale, torch.zeros(shape[0], dtype=torch.int32), 0, -qmax, qmax
        )
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", BITS)
def test_fake_quant_per_tensor_matches_torch(bits):
    for seed in range(5):
        g = gen(100 + seed)
        x = torch.randn(4, 16, 7, 7, generator=g) * 2 + float(torch.randn(1, generator=g))
        lo, hi = float(x.min()) * 0.9, float(x.max()) * 0.9  # some values are clipped
        scale, zp = act_qparams(lo, hi, bits)
        ours = fake_quant_per_tensor(x, scale, zp, bits)
        ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 2**bits - 1)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("zero_point", [0, 1, 2, 3, 7])
def test_fake_quant_per_tensor_ties_match_torch(zero_point):
    # Exact half-way values: rounding must be the same as torch's (half to even, before
    # adding the zero point).
    scale = 0.25
    x = (torch.arange(-12, 40, dtype=torch.float32) + 0.5) * scale
    ours = fake_quant_per_tensor(x, scale, zero_point, 4)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 15)
    assert torch.equal(ours, ref)


def test_fake_quant_does_not_modify_input():
    w = torch.randn(4, 3, 3, 3, generator=gen(0))
    before = w.clone()
    fake_quant_per_channel(w, torch.full((4,), 0.1), 7)
    fake_quant_per_tensor(w, 0.1, 3, 4)
    quantize_weight(w, 3)
    assert torch.equal(w, before)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_act_qparams_cover_range_and_zero(bits):
    lo, hi = -1.3, 4.1
    scale, zp = act_qparams(lo, hi, bits)
    qmax = 2**bits - 1
    assert 0 <= zp <= qmax
    assert scale == pytest.approx((hi - lo) / qmax, rel=1e-6)
    # Zero is exactly representable; the ends of the range are reached within a step.
    assert float(fake_quant_per_tensor(torch.zeros(1), scale, zp, bits)) == 0.0
    ends = fake_quant_per_tensor(torch.tensor([lo, hi]), scale, zp, bits)
    assert abs(float(ends[0]) - lo) <= scale and abs(float(ends[1]) - hi) <= scale
    # A range that excludes zero is widened to include it (ReLU outputs start at 0).
    s2, zp2 = act_qparams(0.5, 2.0, bits)
    assert zp2 == 0 and s2 == pytest.approx(2.0 / qmax, rel=1e-6)


@pytest.mark.parametrize("bits", [0, 1, 17])
def test_unsupported_bits(bits):
    with pytest.raises(ValueError, match=f"bit-width {bits} unsupported"):
        weight_qrange(bits)
    with pytest.raises(ValueError, match=f"bit-width {bits} unsupported"):
        act_qparams(-1.0, 1.0, bits)


def test_weight_qrange_is_narrow_symmetric():
    assert [weight_qrange(b) for b in BITS] == [1, 3, 7, 127]


# ---------------------------------------------------------------- MSE clipping


@pytest.mark.parametrize("bits", BITS)
def test_mse_scales_not_worse_than_max_range(bits):
    qmax = weight_qrange(bits)
    w = torch.randn(24, 16, 3, 3, generator=gen(bits))
    w[:, 0, 0, 0] *= 6  # outliers make clipping worthwhile
    scales = mse_weight_scales(w, bits)
    full = w.reshape(24, -1).abs().amax(1) / qmax
    assert scales.shape == (24,)
    assert (scales > 0).all() and (scales <= full * (1 + 1e-6)).all()
    assert (channel_mse(w, scales, qmax) <= channel_mse(w, full, qmax) * (1 + 1e-6)).all()


@pytest.mark.parametrize("bits", [2, 3])
def test_mse_scales_clip_heavy_tails_at_low_bits(bits):
    # Laplace-distributed weights: at 2-3 bits the MSE-optimal range is well inside the max.
    u = torch.rand(8, 512, generator=gen(3)) - 0.5
    w = -torch.sign(u) * torch.log1p(-2 * u.abs())
    scales = mse_weight_scales(w, bits)
    full = w.abs().amax(1) / weight_qrange(bits)
    assert (scales < 0.8 * full).all()


def test_mse_scales_are_per_channel():
    w = torch.randn(12, 8, 3, 3, generator=gen(4))
    scaled = w.clone()
    scaled[5] *= 10
    a, b = mse_weight_scales(w, 4), mse_weight_scales(scaled, 4)
    torch.testing.assert_close(b[5], a[5] * 10, rtol=1e-5, atol=0)
    others = [i for i in range(12) if i != 5]
    assert torch.equal(a[others], b[others])


def test_mse_scales_vectorized_equals_per_channel():
    w = torch.randn(512, 9, generator=gen(5)) * torch.rand(512, 1, generator=gen(6))
    for bits in (2, 4):
        together = mse_weight_scales(w, bits)
        alone = torch.cat([mse_weight_scales(w[i : i + 1], bits) for i in range(512)])
        assert torch.equal(together, alone)


def test_mse_scales_grid_of_one_is_max_range():
    w = torch.randn(6, 20, generator=gen(7))
    scales = mse_weight_scales(w, 4, grid=1)
    torch.testing.assert_close(scales, w.abs().amax(1) / 7)


def test_mse_scales_zero_channel():
    w = torch.randn(3, 10, generator=gen(8))
    w[1] = 0.0
    q = quantize_weight(w, 4)
    assert torch.isfinite(q).all()
    assert torch.equal(q[1], torch.zeros(10))


@pytest.mark.parametrize("bits", BITS)
def test_quantize_weight_levels(bits):
    w = torch.randn(8, 4, 3, 3, generator=gen(9))
    q = quantize_weight(w, bits)
    scales = mse_weight_scales(w, bits)
    levels = q / scales.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert levels.abs().max() <= weight_qrange(bits) + 1e-4
    for c in range(8):
        assert len(q[c].unique()) <= 2 * weight_qrange(bits) + 1


# ---------------------------------------------------------------- BatchNorm folding


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_fold_bn_preserves_trained_outputs(name, request, test_subset):
    model = request.getfixturevalue(f"{name}_trained")
    before = state_fingerprint(model)
    x = test_subset[0][:256]
    folded = fold_bn(model, x[:8])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(quantizable_layers(folded)) == len(quantizable_layers(model))
    with torch.no_grad():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert state_fingerprint(model) == before


def test_fold_bn_keeps_training_mode_of_user_model(test_subset):
    model = MODELS["resnet20"]().train()
    fold_bn(model, test_subset[0][:8])
    assert model.training


def test_fold_bn_keeps_a_batchnorm_it_cannot_fold():
    # The BatchNorm follows the conv in module order but is applied to the input instead.
    class BNFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.conv(self.bn(x))

    torch.manual_seed(0)
    model = BNFirst()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 5, 5)
    folded = fold_bn(model, x)
    assert isinstance(folded.bn, nn.BatchNorm2d)  # kept, the conv untouched
    assert torch.equal(folded.conv.weight, model.conv.weight)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x))
    assert isinstance(fold_bn(model).bn, nn.Identity)  # unchecked: folded by module order


# ---------------------------------------------------------------- MACs and BOPs


def test_layer_table_resnet20_macs():
    table = {layer.name: layer for layer in layer_table(MODELS["resnet20"]())}
    assert len(table) == 20
    # conv: Hout * Wout * Cout * Cin/groups * kh * kw
    assert table["conv1"].macs == 28 * 28 * 16 * 1 * 3 * 3
    assert table["layers.0.conv1"].macs == 28 * 28 * 16 * 16 * 3 * 3
    assert table["layers.3.conv1"].macs == 14 * 14 * 32 * 16 * 3 * 3  # stride 2
    assert table["layers.6.conv2"].macs == 7 * 7 * 64 * 64 * 3 * 3
    # linear: in * out
    assert table["fc"].macs == 64 * 10
    assert table["conv1"].params == 16 * 9 and table["conv1"].kind == "Conv2d"
    assert table["fc"].params == 64 * 10 + 10 and table["fc"].kind == "Linear"
    assert table["layers.6.conv2"].weight_shape == (64, 64, 3, 3)


def test_layer_table_mobilenetv2_macs():
    table = {layer.name: layer for layer in layer_table(MODELS["mobilenetv2"]())}
    # depthwise: Cin/groups == 1
    assert table["features.3.body.0"].macs == 28 * 28 * 16 * 1 * 3 * 3
    assert table["features.4.body.0"].macs == 28 * 28 * 64 * 16  # 1x1 expansion
    assert table["features.4.body.3"].macs == 14 * 14 * 64 * 1 * 3 * 3  # depthwise, stride 2
    assert table["features.11"].macs == 7 * 7 * 256 * 96
    assert table["classifier"].macs == 256 * 10
    assert table["features.4.body.3"].params == 64 * 9


def test_layer_table_restores_training_mode():
    model = MODELS["resnet20"]().train()
    layer_table(model)
    assert model.training
    assert all(m.training for m in model.modules())


def test_layer_table_to_dict():
    info = layer_table(MODELS["resnet20"]())[0].to_dict()
    assert info == {
        "name": "conv1",
        "kind": "Conv2d",
        "weight_shape": [16, 1, 3, 3],
        "params": 144,
        "macs": 28 * 28 * 16 * 9,
    }


def test_bops_formula():
    macs, w, a = [100, 300], [2, 8], [8, 4]
    assert bops(macs, w, a) == 100 * 2 * 8 + 300 * 8 * 4
    assert relative_bops(macs, w, a) == pytest.approx((1600 + 9600) / (64 * 400))


def test_relative_bops_uniform():
    macs = [layer.macs for layer in layer_table(MODELS["resnet20"]())]
    n = len(macs)
    assert relative_bops(macs, [8] * n, [8] * n) == pytest.approx(1.0)
    assert relative_bops(macs, [4] * n, [8] * n) == pytest.approx(0.5)
    assert relative_bops(macs, [2] * n, [8] * n) == pytest.approx(0.25)
    assert bops(macs, [8] * n, [8] * n) == 64 * sum(macs)


# ---------------------------------------------------------------- QuantSim


def uniform(sim: QuantSim, w: int | None, a: int | None = 8) -> None:
    sim.set_config([w] * sim.num_layers, [a] * sim.num_layers)


@pytest.fixture(scope="module")
def uniform_accuracy(resnet_sim, test_subset) -> dict:
    """(top-1, loss) of the simulator on the first 1,000 test images: FP and uniform
    W8/W4/W3/W2 (A8), measured once for the tests below."""
    x, y = test_subset[0][:1000], test_subset[1][:1000]
    out = {}
    for bits in (None, 8, 4, 3, 2):
        if bits is None:
            resnet_sim.set_fp()
        else:
            uniform(resnet_sim, bits)
        out[bits] = resnet_sim.evaluate(x, y)
    resnet_sim.set_fp()
    return out


def test_quantsim_w8a8_close_to_fp(uniform_accuracy):
    assert abs(uniform_accuracy[8][0] - uniform_accuracy[None][0]) <= 0.5


def test_quantsim_fp_equals_original_model(uniform_accuracy, resnet20_trained, test_subset):
    x, y = test_subset[0][:1000], test_subset[1][:1000]
    acc, loss = uniform_accuracy[None]
    ref_acc, ref_loss = evaluate(resnet20_trained, x, y)
    assert abs(acc - ref_acc) <= 0.1
    assert loss == pytest.approx(ref_loss, rel=1e-3)


def test_quantsim_uniform_accuracy_monotone(uniform_accuracy):
    acc = {bits: uniform_accuracy[bits][0] for bits in (8, 4, 3, 2)}
    # Per-channel MSE-clipped 4-bit weights are nearly lossless on this net, so W8 vs W4 is
    # only ordered up to test-sample noise (0.5 points = 5 of 1000 images).
    assert acc[8] >= acc[4] - 0.5
    assert acc[4] >= acc[3] >= acc[2]
    assert acc[2] < acc[8] - 5.0  # 2-bit weights everywhere really hurt


def test_quantsim_low_bits_worse_on_average(sim, test_subset):
    # 500 images: a mix of 2/3-bit layers costs tens of points, far above sampling noise.
    x, y = test_subset[0][:500], test_subset[1][:500]
    rng = np.random.default_rng(0)

    def mean_acc(choices) -> float:
        accs = []
        for _ in range(3):
            sim.set_config(rng.choice(choices, sim.num_layers).tolist(), [8] * sim.num_layers)
            accs.append(sim.evaluate(x, y)[0])
        return float(np.mean(accs))

    assert mean_acc([2, 3]) < mean_acc([4, 8])


def test_quantsim_evaluate_matches_forward(sim, test_subset):
    x, y = test_subset[0][:700], test_subset[1][:700]
    uniform(sim, 3)
    logits = sim.forward(x, batch=64)
    acc, loss = sim.evaluate(x, y, batch=100)
    assert logits.shape == (700, 10)
    assert acc == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-4)


def test_quantsim_set_fp_restores_outputs(sim, test_subset):
    x = test_subset[0][:200]
    ref = sim.forward(x)
    uniform(sim, 2, 4)
    assert not torch.equal(sim.forward(x), ref)
    sim.set_fp()
    assert torch.equal(sim.forward(x), ref)


def test_quantsim_weights_are_qb_of_folded_weights(sim):
    w_bits = [2, 3, 4, 8] * 5
    sim.set_config(w_bits, [None] * 20)
    for i, (_, m) in enumerate(sim.layers):
        assert torch.equal(m.weight, quantize_weight(sim.fp_weights[i], w_bits[i]))
    folded = fold_bn(sim.model)
    for w, (_, m) in zip(sim.fp_weights, quantizable_layers(folded), strict=True):
        assert torch.equal(w, m.weight)


def test_quantsim_activation_inputs_are_quantized(sim, test_subset):
    seen = {}
    layer = sim.layers[5][1]
    handle = layer.register_forward_pre_hook(lambda m, inp: seen.update(x=inp[0].clone()))
    try:
        sim.set_config([None] * 20, [4 if i == 5 else None for i in range(20)])
        sim.forward(test_subset[0][:50])
        assert len(seen["x"].unique()) <= 16
        sim.set_fp()
        sim.forward(test_subset[0][:50])
        assert len(seen["x"].unique()) > 16
    finally:
        handle.remove()


def test_quantsim_set_config_wrong_length(sim):
    with pytest.raises(ValueError, match="20 quantizable layers") as info:
        sim.set_config([4] * 19, [8] * 19)
    assert "19" in str(info.value)
    with pytest.raises(ValueError, match="20 quantizable layers"):
        sim.set_config([4] * 20, [8] * 21)


def test_quantsim_rejected_config_leaves_state_unchanged(sim, test_subset):
    x = test_subset[0][:100]
    ref = sim.forward(x)
    with pytest.raises(ValueError):
        sim.set_config([2] * 19 + [1], [8] * 20)
    assert torch.equal(sim.forward(x), ref)


def test_quantsim_quantized_weight_cached(sim):
    a = sim.quantized_weight(3, 4)
    assert sim.quantized_weight(3, 4) is a
    assert torch.equal(a, quantize_weight(sim.fp_weights[3], 4))
    assert sim.quantized_weight(3, 2) is not a


def test_quantsim_never_modifies_user_model(resnet20_trained, calib, test_subset):
    model = resnet20_trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    qs = QuantSim(model, calib[:64])
    uniform(qs, 2, 4)
    qs.evaluate(*[t[:100] for t in test_subset])
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    hooks_after = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    assert hooks_after == hooks_before
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_quantsim_keeps_training_mode_of_user_model(calib):
    model = MODELS["resnet20"]().train()
    QuantSim(model, calib[:16])
    assert model.training


@pytest.mark.parametrize("call", ["QuantSim", "layer_table"])
def test_user_model_keeps_per_module_modes(call, calib):
    model = MODELS["resnet20"]().train()
    model.bn1.eval()  # a frozen BatchNorm, as in fine-tuning
    if call == "QuantSim":
        QuantSim(model, calib[:16])
    else:
        layer_table(model)
    assert model.training and model.layers.training
    assert not model.bn1.training


def test_quantsim_activation_ranges_calibrated(sim, calib):
    assert len(sim.act_ranges) == 20
    lo0, hi0 = sim.act_ranges[0]
    # The first layer sees the calibration images themselves.
    assert lo0 == pytest.approx(float(calib.min())) and hi0 == pytest.approx(float(calib.max()))
    # Every later conv follows a ReLU: its input is non-negative.
    assert all(lo >= 0.0 and hi > lo for lo, hi in sim.act_ranges[1:])


@pytest.mark.parametrize(
    "layer, kind",
    [
        (nn.Conv1d(1, 2, 3), "Conv1d"),
        (nn.ConvTranspose2d(2, 2, 3), "ConvTranspose2d"),
        (nn.MultiheadAttention(4, 2), "MultiheadAttention"),
        (nn.Embedding(10, 4), "Embedding"),
    ],
)
def test_layers_the_ptq_cannot_quantize_are_refused_by_name(layer, kind):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(layer))
    with pytest.raises(ValueError, match=rf"layer '1\.0' \({kind}\) cannot be quantized"):
        quantizable_layers(model)
    with pytest.raises(ValueError, match=kind):
        layer_table(model)
