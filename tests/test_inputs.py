"""Tests for primitives.inputs: definitions, shapes, side effects, Hessian estimate, cache, errors.

Reference values are computed independently here (manual BN folding, forward hooks on a
private copy with one weight swapped, ``torch.autograd`` gradients and exact Hessians), on
tiny models over 8x8 average-pooled Fashion-MNIST images, and on a random-init ResNet-20.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import primitives.inputs as inputs_module
from benchmark.data import calibration_batch
from benchmark.models import resnet20
from benchmark.ptq import fold_bn
from benchmark.quantizers import quantizable_layers, quantize_weight
from primitives.inputs import (
    BIT_DEPENDENT,
    INPUT_NAMES,
    InputSettings,
    cache_dir,
    cache_key,
    compute_inputs,
    get_inputs,
)

BITS = (2, 3, 4, 8)
WEIGHT_SHAPED = ("W", "G", "H", "V", "Wq", "E")
OUTPUT_SHAPED = ("A", "D", "Ga")
NO_LABELS = ("W", "Wq", "E", "D", "A", "V", "b", "Dz")


class TinyNet(nn.Module):
    """conv(1->C, 3x3) + BN + ReLU + linear on 1x8x8 images: two quantizable layers."""

    def __init__(
        self,
        channels: int = 4,
        stride: int = 1,
        classes: int = 10,
        inplace: bool = False,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, stride, 1, padding_mode=padding_mode)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=inplace)
        side = 8 // stride
        self.fc = nn.Linear(channels * side * side, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


def tiny_model(seed: int = 0, **kwargs) -> TinyNet:
    """A seeded TinyNet in eval mode whose BatchNorm is far from identity (folding matters)."""
    torch.manual_seed(seed)
    model = TinyNet(**kwargs)
    with torch.no_grad():
        bn = model.bn
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.25, 4.0)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the cores are shared with training jobs, and thread contention
    makes small autograd calls up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """16 real training images average-pooled to 8x8, and their labels."""
    x, y = calibration_batch(16, seed=1)
    return F.adaptive_avg_pool2d(x, 8), y


@pytest.fixture(scope="module")
def tiny(batch):
    """A TinyNet and all its inputs (default settings, no cache)."""
    model = tiny_model()
    x, y = batch
    return model, compute_inputs(model, x, y, InputSettings(candidates=BITS))


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in quantizable_layers(model)]


def layer_outputs(folded: nn.Module, x: torch.Tensor, swap=None) -> dict[str, torch.Tensor]:
    """Output of every quantizable layer of a copy of ``folded`` on ``x`` (forward hooks).

    ``swap = (layer name, weight)`` replaces that one layer's weight first.
    """
    net = copy.deepcopy(folded)
    if swap is not None:
        with torch.no_grad():
            net.get_submodule(swap[0]).weight.copy_(swap[1])
    outs: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(mod, inputs, output):
            outs[name] = output.detach().clone()

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in quantizable_layers(net)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return outs


def output_gradients(folded: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """dLoss/d(layer output) of every quantizable layer of a copy of ``folded``."""
    net = copy.deepcopy(folded)
    outs: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o: outs.append(o))
        for _, m in quantizable_layers(net)
    ]
    try:
        loss = F.cross_entropy(net(x), y)
    finally:
        for h in handles:
            h.remove()
    return list(torch.autograd.grad(loss, outs))


def assert_same_tensors(a, b) -> None:
    """Two LayerInputs hold bitwise-equal tensors under the same names."""
    assert len(a.tensors) == len(b.tensors)
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta.keys() == tb.keys()
        for name in ta:
            # rounded to float32, served from the cache as float64: the same values
            assert torch.equal(ta[name].double(), tb[name].double()), name


# ----------------------------------------------------------------------------- shapes


def test_every_input_has_a_leading_bit_axis_and_the_documented_shape(tiny, batch):
    model, inputs = tiny
    x, _ = batch
    outs = layer_outputs(fold_bn(model), x)
    assert inputs.candidates == BITS
    assert [info.name for info in inputs.layers] == layer_names(model) == ["conv", "fc"]
    assert inputs.num_layers == 2
    for (name, module), t in zip(quantizable_layers(model), inputs.tensors, strict=True):
        assert set(t) == set(INPUT_NAMES)
        w_shape, out_shape = tuple(module.weight.shape), tuple(outs[name].shape)
        for key, value in t.items():
            assert value.dtype == torch.float32, key
            assert value.shape[0] == (len(BITS) if key in BIT_DEPENDENT else 1), key
        assert t["b"].shape == (len(BITS),)
        for key in WEIGHT_SHAPED:
            assert tuple(t[key].shape[1:]) == w_shape, key
        for key in OUTPUT_SHAPED:
            assert tuple(t[key].shape[1:]) == out_shape, key
    assert inputs.shapes()[1]["D"] == (len(BITS), len(x), 10)
    assert all(s["Dz"] == (len(BITS), len(x), 10) for s in inputs.shapes())  # bit, image, class
    expected_bytes = sum(v.numel() * 4 for t in inputs.tensors for v in t.values())
    assert inputs.nbytes() == expected_bytes


def test_only_the_requested_inputs_are_computed(batch):
    x, y = batch
    inputs = compute_inputs(tiny_model(), x, y, InputSettings(names=("E", "b")))
    assert [set(t) for t in inputs.tensors] == [{"E", "b"}, {"E", "b"}]


# ----------------------------------------------------------------------------- definitions


def test_W_is_the_bn_folded_weight(tiny):
    model, inputs = tiny
    bn = model.bn
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv_w = model.conv.weight * factor.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(inputs.tensors[0]["W"][0], conv_w.detach(), rtol=1e-6, atol=0)
    assert torch.equal(inputs.tensors[1]["W"][0], model.fc.weight.detach())
    assert not torch.allclose(inputs.tensors[0]["W"][0], model.conv.weight.detach())


def test_Wq_and_E_follow_quantize_weight_bit_by_bit(tiny, batch):
    """Q_b(W) of the float64 fold, rounded to float32 (no float32 arithmetic on the way)."""
    model, inputs = tiny
    folded = fold_bn(copy.deepcopy(model).double(), batch[0][:2].double())
    for t, (_, layer) in zip(inputs.tensors, quantizable_layers(folded), strict=True):
        w = layer.weight.detach()
        assert torch.equal(t["W"][0], w.float())
        for i, b in enumerate(BITS):
            assert torch.equal(t["Wq"][i], quantize_weight(w, b).float())
            assert torch.equal(t["E"][i], (w - quantize_weight(w, b)).float())
        # fewer bits, larger error: the slots really differ and are in candidate order
        errors = [float(t["E"][i].square().sum()) for i in range(len(BITS))]
        assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1] > 0


# The kernels another CPU would pick, emulated on this one: PyTorch's unvectorized ATen
# kernels, oneDNN's SSE4.1 convolutions, one thread. Each is read once, at first dispatch,
# hence a fresh process per setting.
OTHER_CPU = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
}
CHILD = """
import sys, torch
from pathlib import Path
from benchmark.data import calibration_batch
from benchmark.factory import build_model
from primitives.inputs import InputSettings, compute_inputs, save_inputs
x, y = calibration_batch(16, 0)
names = ("A", "W", "G", "V", "Ga", "Wq", "E", "D", "b", "Dz")
inputs = compute_inputs(build_model("resnet20"), x, y, InputSettings(names=names))
save_inputs(inputs, Path(sys.argv[1]))
"""


def test_inputs_are_the_same_with_another_cpus_kernels(tmp_path):
    """Trained ResNet-20 on 16 images: computed in float64 and rounded, the inputs do not
    depend on the kernels the CPU's instruction set selects (in float32, 12-96 % of each
    input's values differed), and neither does the default proxy's ranking of the bench.

    Another summation order still moves float64 results in their last bits; where a value
    is small against the rest of its tensor (a gradient after cancellation) that can show
    after rounding to float32 (AVX-512 against the unvectorized kernels: 73 of 16.8 M
    values of ``Ga``, up to 22 ulps of the value, 0.0005 ulp of the tensor's largest; 0.06 %
    of ``Ga`` with 128 images, ``emq.perf.input_isa``). Allowed: one value in ten thousand,
    each within one float32 ulp of its tensor's largest magnitude."""
    import json
    import subprocess
    import sys

    from benchmark.bench import Bench
    from emq.fitness import rank_fingerprint
    from emq.graph import score_table
    from emq.proxy import DEFAULT_PROXY, load_proxy_document
    from emq.scoring import config_scores
    from emq.transfer import shipped_bench
    from primitives.inputs import load_inputs

    def run(path: Path, env: dict) -> None:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], env={**os.environ, **env},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    run(tmp_path / "native", {"OMP_NUM_THREADS": "2"})
    run(tmp_path / "other", OTHER_CPU)
    a, b = load_inputs(tmp_path / "native"), load_inputs(tmp_path / "other")
    total = differ = 0
    for la, lb in zip(a.tensors, b.tensors, strict=True):
        assert la.keys() == lb.keys()
        for name in la:
            x, y = la[name].numpy().astype(np.float32), lb[name].numpy().astype(np.float32)
            total += x.size
            diff = x != y
            differ += int(diff.sum())
            scale = np.spacing(np.float32(max(np.abs(x).max(), np.abs(y).max())))
            assert (np.abs(x[diff] - y[diff]) <= scale).all(), name
    assert total > 1_000_000 and differ <= total // 10_000, (differ, total)
    bench = Bench.open(shipped_bench("resnet20"))
    proxy = load_proxy_document(json.loads(DEFAULT_PROXY.read_text()))
    ranks = [
        rank_fingerprint(config_scores(score_table(proxy.expr, inp), bench.bit_index()))
        for inp in (a, b)
    ]
    assert ranks[0] == ranks[1]


class Float32Constant(nn.Module):
    """A forward that feeds a float32 tensor of its own to a matmul: cannot run in float64."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mix = torch.eye(64) * 0.5  # float32 whatever the input's dtype
        return self.fc(torch.flatten(x, 1) @ mix)


def test_a_model_that_cannot_run_in_float64_gets_float32_inputs_and_a_warning(batch):
    x, y = batch
    torch.manual_seed(0)
    model = Float32Constant().eval()
    names = INPUT_NAMES  # V too: computed in float32 for such a model
    settings = InputSettings(candidates=BITS, names=names)
    with pytest.warns(RuntimeWarning, match="Float32Constant does not run in float64"):
        inputs = compute_inputs(model, x, y, settings)
    ref = compute_inputs(model, x, y, settings, torch.float32)
    for a, b in zip(inputs.tensors, ref.tensors, strict=True):
        assert a.keys() == b.keys() == set(names)
        for name in a:
            assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("candidates", [BITS, (3,), (8, 5)])
def test_b_is_the_candidates(batch, candidates):
    x, _ = batch
    settings = InputSettings(candidates=candidates, names=("b", "Wq"))
    inputs = compute_inputs(tiny_model(), x, None, settings)
    assert inputs.candidates == candidates
    for t in inputs.tensors:
        assert torch.equal(t["b"], torch.tensor(candidates, dtype=torch.float32))
        assert t["Wq"].shape[0] == len(candidates)


def test_A_is_the_layer_output(tiny, batch):
    model, inputs = tiny
    outs = layer_outputs(fold_bn(model), batch[0])
    for name, t in zip(layer_names(model), inputs.tensors, strict=True):
        torch.testing.assert_close(t["A"][0], outs[name], rtol=1e-6, atol=1e-6)
    assert (inputs.tensors[0]["A"] < 0).any()  # pre-activation: the ReLU comes after the hook


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_D_is_the_output_change_with_only_this_layer_quantized(batch, padding_mode):
    """D[b] = (layer output with that layer's weight swapped for Wq[b]) - (FP layer output)."""
    x, y = batch
    model = tiny_model(padding_mode=padding_mode)
    inputs = compute_inputs(model, x, y, InputSettings(candidates=BITS, names=("W", "Wq", "D")))
    folded = fold_bn(model)
    fp = layer_outputs(folded, x)
    for name, t in zip(layer_names(model), inputs.tensors, strict=True):
        scale = float(fp[name].abs().max())
        for i, _ in enumerate(BITS):
            quantized = layer_outputs(folded, x, swap=(name, t["Wq"][i]))
            expected = quantized[name] - fp[name]
            torch.testing.assert_close(t["D"][i], expected, rtol=1e-5, atol=1e-5 * scale)
            # the other layers' weights stay FP: the earlier layer's output is untouched
            if name == "fc":
                assert torch.equal(quantized["conv"], fp["conv"])


def test_Dz_is_the_logit_change_in_the_softmax_fisher_metric(tiny, batch):
    """Dz[b, n] = sqrt(p) * (dz - p . dz), dz = d logits / d eps of the float64 net whose
    layer output is A + eps * D[b] (central differences here), p = softmax of the logits:
    |Dz[b, n]|^2 = dz^T (diag p - p p^T) dz. Without D unless it is asked for too."""
    model, inputs = tiny
    x, _ = batch
    folded = fold_bn(copy.deepcopy(model).double(), x[:2].double())
    p = torch.softmax(folded(x.double()), 1).detach()

    def logits(layer: nn.Module, delta: torch.Tensor) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda mod, i, o: o + delta)
        try:
            with torch.no_grad():
                return folded(x.double())
        finally:
            handle.remove()

    eps = 1e-4
    for (_, layer), t in zip(quantizable_layers(folded), inputs.tensors, strict=True):
        for i, _ in enumerate(BITS):
            d = t["D"][i].double()
            dz = (logits(layer, eps * d) - logits(layer, -eps * d)) / (2 * eps)
            expected = p.sqrt() * (dz - (p * dz).sum(1, keepdim=True))
            scale = float(expected.abs().max())
            assert scale > 0
            torch.testing.assert_close(t["Dz"][i].double(), expected, rtol=1e-4, atol=1e-5 * scale)
            ggn = (dz**2 * p).sum(1) - (dz * p).sum(1) ** 2
            torch.testing.assert_close(t["Dz"][i].double().square().sum(1), ggn, rtol=1e-3, atol=0)
    alone = compute_inputs(model, x, None, InputSettings(candidates=BITS, names=("Dz",)))
    assert [set(t) for t in alone.tensors] == [{"Dz"}, {"Dz"}]
    for t, full in zip(alone.tensors, inputs.tensors, strict=True):
        assert torch.equal(t["Dz"], full["Dz"])  # no labels needed; the same values


def test_G_is_the_loss_gradient_wrt_the_folded_weight(tiny, batch):
    model, inputs = tiny
    x, y = batch
    folded = fold_bn(model)
    weights = {f"{n}.weight": m.weight.detach().clone() for n, m in quantizable_layers(folded)}
    for w in weights.values():
        w.requires_grad_(True)
    loss = F.cross_entropy(functional_call(folded, weights, (x,)), y)
    grads = torch.autograd.grad(loss, list(weights.values()))
    for g, t in zip(grads, inputs.tensors, strict=True):
        torch.testing.assert_close(t["G"][0], g, rtol=1e-5, atol=1e-7)
        assert g.abs().max() > 0


def test_Ga_is_the_loss_gradient_wrt_the_layer_output(tiny, batch):
    model, inputs = tiny
    grads = output_gradients(fold_bn(model), *batch)
    for g, t in zip(grads, inputs.tensors, strict=True):
        torch.testing.assert_close(t["Ga"][0], g, rtol=1e-5, atol=1e-8)
        assert g.abs().max() > 0


def test_V_is_the_gradient_of_the_abs_weight_net_on_an_input_of_ones(tiny):
    """V = dR/d|theta| with R = sum of the output of the activation-free |theta| net on ones.

    Every parameter (biases too) is made non-negative and the input is all ones, so every
    pre-activation is >= 0 and the ReLU is the identity: removing it changes nothing.
    """
    model, inputs = tiny
    folded = fold_bn(model)
    wc, bc, wl, bl = (
        p.detach().double().abs().requires_grad_(True)
        for p in (folded.conv.weight, folded.conv.bias, folded.fc.weight, folded.fc.bias)
    )
    hidden = F.conv2d(torch.ones(1, 1, 8, 8, dtype=torch.float64), wc, bc, padding=1)
    r = F.linear(torch.flatten(hidden, 1), wl, bl).sum()
    expected = torch.autograd.grad(r, (wc, wl))
    for e, t in zip(expected, inputs.tensors, strict=True):
        torch.testing.assert_close(t["V"][0], e.float(), rtol=1e-5, atol=0)
    # last layer: dR/dW[k, j] is the hidden unit j, the same for every output k
    torch.testing.assert_close(inputs.tensors[1]["V"][0][3], hidden.flatten().float())


def test_inplace_relu_does_not_change_the_inputs(batch):
    """A ReLU(inplace=True) after a folded BN (an Identity) must not rewrite A or Ga.

    Its twin with ``inplace=False`` has the same weights and computes the same function, so
    every input must be the same.
    """
    x, y = batch
    settings = InputSettings(candidates=BITS, hutchinson_samples=2)
    plain = compute_inputs(tiny_model(inplace=False), x, y, settings)
    inplace = compute_inputs(tiny_model(inplace=True), x, y, settings)
    for name in INPUT_NAMES:
        for tp, ti in zip(plain.tensors, inplace.tensors, strict=True):
            torch.testing.assert_close(ti[name], tp[name], rtol=1e-6, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------- side effects


def module_state(model: nn.Module) -> list[tuple]:
    """Per module: name, training flag and every hook dict's keys."""
    return [
        (
            name,
            m.training,
            list(m._forward_hooks),
            list(m._forward_pre_hooks),
            list(m._backward_hooks),
        )
        for name, m in model.named_modules()
    ]


@pytest.mark.parametrize("mode", ["eval", "train", "train_with_frozen_bn"])
def test_the_users_model_is_untouched(batch, mode, tmp_path):
    """No hooks left, no .grad, bitwise-equal state, and every module's mode preserved."""
    x, y = batch
    model = tiny_model()
    model.train(mode != "eval")
    if mode == "train_with_frozen_bn":
        model.bn.eval()  # a common fine-tuning setup: BN statistics frozen
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_modules = module_state(model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())

    compute_inputs(model, x, y, InputSettings(hutchinson_samples=2))
    get_inputs(model, x, y, InputSettings(hutchinson_samples=2), cache=tmp_path)

    assert module_state(model) == before_modules
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    after_state = model.state_dict()
    assert after_state.keys() == before_state.keys()
    for k, v in before_state.items():
        assert torch.equal(after_state[k], v), k


def test_the_users_mode_is_restored_when_the_batch_does_not_fit():
    model = tiny_model().train()
    with pytest.raises(ValueError, match="shape"):
        compute_inputs(model, torch.randn(4, 1, 7, 7), None, InputSettings(names=("W",)))
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- Hessian


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact Hessian of the CE loss w.r.t. all quantizable (folded) weights jointly, [P, P]."""
    folded = fold_bn(model)
    layers = quantizable_layers(folded)
    names = [f"{n}.weight" for n, _ in layers]
    shapes = [m.weight.shape for _, m in layers]
    flat = torch.cat([m.weight.detach().flatten() for _, m in layers])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta, [s.numel() for s in shapes])
        weights = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(folded, weights, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_hutchinson_diagonal_matches_the_exact_hessian(batch):
    """H with 4000 Rademacher samples agrees with the exact Hessian diagonal.

    Model: conv(1->4, stride 2) + BN + ReLU + linear(64->10): 36 + 640 weights. The exact
    Hessian is taken jointly over both weights (as H is); its off-diagonal entries give the
    estimator's exact standard errors, so the tolerances are statistical:

    * every element within 5 standard errors of the exact diagonal, the standard error of
      element i being sqrt(sum_{j != i} H_ij^2 / n);
    * per layer, the trace within 5 standard errors, sqrt((2 sum_{i != j in l} H_ij^2 +
      sum_{i in l, j not in l} H_ij^2) / n), a bound tighter than half the trace (so the
      check rejects a zero, negated or doubled estimate);
    * per layer, Pearson correlation of estimate and exact diagonal > 0.9;
    * linear layer (small estimator noise, trace standard error < 2 %): relative error of the
      trace <= 5 % and mean absolute error <= 0.2 x mean |diag|. (The conv weights are
      strongly coupled to the linear ones: their trace standard error is ~7 %.)
    """
    x, y = batch
    model = tiny_model(channels=4, stride=2)
    n = 4000
    settings = InputSettings(hutchinson_samples=n, names=("H",))
    found = compute_inputs(model, x, y, settings).tensors
    estimate = torch.cat([t["H"][0].flatten() for t in found]).double()
    hess = exact_hessian(model, x, y).double()
    diag = hess.diagonal()
    sizes = (36, 640)
    assert estimate.shape == diag.shape == (sum(sizes),)

    off = hess - torch.diag(diag)
    element_se = torch.sqrt(off.square().sum(1) / n)
    bound = 5 * element_se + 1e-6 * diag.abs().max()
    assert ((estimate - diag).abs() <= bound).all()

    start = 0
    for size in sizes:
        block = slice(start, start + size)
        start += size
        est, exact = estimate[block], diag[block]
        trace = float(exact.sum())
        inside = off[block, block].square().sum()
        across = off[block].square().sum() - inside
        trace_se = float(torch.sqrt((2 * inside + across) / n))
        assert 5 * trace_se < 0.5 * trace
        trace_error = abs(float(est.sum()) - trace)
        assert trace_error <= 5 * trace_se
        assert np.corrcoef(est.numpy(), exact.numpy())[0, 1] > 0.9
        if size == 640:
            assert trace_se < 0.02 * trace
            assert trace_error <= 0.05 * trace
            assert (est - exact).abs().mean() <= 0.2 * exact.abs().mean()


def test_hutchinson_estimate_is_reproducible_by_seed(batch):
    x, y = batch
    model = tiny_model()

    def hessian(seed: int) -> list[torch.Tensor]:
        settings = InputSettings(hutchinson_samples=4, hutchinson_seed=seed, names=("H",))
        return [t["H"] for t in compute_inputs(model, x, y, settings).tensors]

    first, again, other = hessian(0), hessian(0), hessian(1)
    for a, b, c in zip(first, again, other, strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


# ----------------------------------------------------------------------------- cache


def test_cache_stores_a_file_and_returns_it_without_computing(batch, tmp_path, monkeypatch):
    x, y = batch
    model = tiny_model()
    settings = InputSettings(hutchinson_samples=2)
    first = get_inputs(model, x, y, settings, cache=tmp_path)
    assert not first.from_cache
    assert first.key == cache_key(model, x, y, settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{first.key}.f64"]

    def no_compute(*args, **kwargs):
        raise AssertionError("compute_inputs called on a cache hit")

    monkeypatch.setattr(inputs_module, "compute_inputs", no_compute)
    second = get_inputs(model, x, y, settings, cache=tmp_path)
    assert second.from_cache and second.key == first.key
    assert second.candidates == first.candidates
    assert second.layers == first.layers
    assert_same_tensors(first, second)
    assert_same_tensors(first, compute_inputs(model, x, y, settings))


def test_cached_inputs_are_float64_maps_of_the_file(batch, tmp_path):
    """Processes reading one cache file share its pages: the tensors map the file."""
    x, y = batch
    inputs = get_inputs(tiny_model(), x, y, InputSettings(hutchinson_samples=2), cache=tmp_path)
    again = inputs_module.load_inputs(tmp_path / f"{inputs.key}.f64")
    maps = []  # (start, end) of every mapping of the cache file in this process
    for line in open("/proc/self/maps").read().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(inputs.path.resolve()):
            start, end = (int(a, 16) for a in fields[0].split("-"))
            maps.append((start, end))
    assert maps
    for t in (*inputs.tensors, *again.tensors):
        for v in t.values():
            assert v.dtype == torch.float64
            assert any(a <= v.data_ptr() < b for a, b in maps)
    # copy-on-write: a write stays in this process, the file keeps its values
    w = again.tensors[0]["W"]
    before = w.clone()
    w.add_(1.0)
    assert torch.equal(inputs_module.load_inputs(inputs.path).tensors[0]["W"], before)


def _resident_kib(path: Path) -> int:
    """Resident memory of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps").read().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields[0].split("-")) == 2 and ":" not in fields[0]:
            inside = len(fields) == 6 and fields[5] == str(path.resolve())
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def test_release_drops_the_mapped_pages_and_keeps_the_values(batch, tmp_path):
    """A multi-bench campaign holds one model's input pages at a time (``release``)."""
    x, y = batch
    inputs = get_inputs(tiny_model(), x, y, InputSettings(hutchinson_samples=2), cache=tmp_path)
    values = [{k: v.clone() for k, v in t.items()} for t in inputs.tensors]
    assert sum(float(v.sum()) for t in inputs.tensors for v in t.values()) != 0.0
    assert _resident_kib(inputs.path) > 0
    inputs.release()
    assert _resident_kib(inputs.path) == 0
    for t, before in zip(inputs.tensors, values, strict=True):  # read again from the file
        for k, v in t.items():
            assert torch.equal(v, before[k])
    assert _resident_kib(inputs.path) > 0
    shipped = pickle.loads(pickle.dumps(inputs))  # the values travel, the mapping does not
    assert shipped.mapping is None and shipped.tensors[0]["W"].equal(values[0]["W"])
    shipped.release()  # nothing mapped: nothing happens


def test_cache_key_changes_with_model_batch_labels_candidates_and_settings(batch):
    x, y = batch
    model = tiny_model()
    settings = InputSettings()
    base = cache_key(model, x, y, settings)
    assert cache_key(copy.deepcopy(model), x.clone(), y.clone(), InputSettings()) == base

    weight_changed = copy.deepcopy(model)
    with torch.no_grad():
        weight_changed.fc.weight[0, 0] += 1e-3
    stats_changed = copy.deepcopy(model)
    stats_changed.bn.running_var[0] += 1e-3
    x_changed = x.clone()
    x_changed[0, 0, 0, 0] += 1e-3
    y_changed = y.clone()
    y_changed[0] = (y[0] + 1) % 10
    keys = [
        cache_key(weight_changed, x, y, settings),
        cache_key(stats_changed, x, y, settings),
        cache_key(tiny_model(channels=3), x, y, settings),
        cache_key(model, x_changed, y, settings),
        cache_key(model, x[:8], y[:8], settings),
        cache_key(model, x, y_changed, settings),
        cache_key(model, x, None, InputSettings(names=NO_LABELS)),
        cache_key(model, x, y, InputSettings(candidates=(2, 4, 8))),
        cache_key(model, x, y, InputSettings(hutchinson_samples=8)),
        cache_key(model, x, y, InputSettings(hutchinson_seed=1)),
        cache_key(model, x, y, InputSettings(clip_grid=50)),
        cache_key(model, x, y, InputSettings(names=("W", "H"))),
    ]
    assert len(set(keys + [base])) == len(keys) + 1


def test_a_changed_model_is_computed_again(batch, tmp_path):
    x, y = batch
    model = tiny_model()
    settings = InputSettings(names=("W",))
    get_inputs(model, x, y, settings, cache=tmp_path)
    with torch.no_grad():
        model.fc.weight.mul_(2)
    again = get_inputs(model, x, y, settings, cache=tmp_path)
    assert not again.from_cache
    assert torch.equal(again.tensors[1]["W"][0], model.fc.weight)
    assert len(list(tmp_path.glob("*.f64"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_cache_file_raises_value_error_naming_it(batch, tmp_path, damage):
    x, y = batch
    model = tiny_model()
    settings = InputSettings(names=("W", "b"))
    inputs = get_inputs(model, x, y, settings, cache=tmp_path)
    path = tmp_path / f"{inputs.key}.f64"
    raw = path.read_bytes()
    damaged = {"garbage": b"not an input file" * 8, "truncated": raw[:-8], "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(ValueError, match="corrupt") as info:
        get_inputs(model, x, y, settings, cache=tmp_path)
    assert str(path) in str(info.value)


def test_emq_cache_selects_the_cache_folder(batch, tmp_path, monkeypatch):
    x, y = batch
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "inputs"
    inputs = get_inputs(tiny_model(), x, y, InputSettings(names=("W",)))
    assert [p.name for p in (tmp_path / "inputs").iterdir()] == [f"{inputs.key}.f64"]
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "other"))
    assert cache_dir() == tmp_path / "other" / "inputs"


def test_cache_true_uses_the_default_folder(batch, tmp_path, monkeypatch):
    """``cache`` is typed ``Path | str | None | bool``: True means "cache, where by default"."""
    x, y = batch
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path))
    inputs = get_inputs(tiny_model(), x, y, InputSettings(names=("W",)), cache=True)
    assert (tmp_path / "inputs" / f"{inputs.key}.f64").is_file()


def test_cache_false_writes_nothing(batch, tmp_path, monkeypatch):
    x, y = batch
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path))
    inputs = get_inputs(tiny_model(), x, y, InputSettings(names=("W",)), cache=False)
    assert not inputs.from_cache
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cache", [False, "tmp"])
def test_a_model_without_conv_or_linear_is_rejected(batch, cache, tmp_path):
    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(ValueError, match="Conv2d or Linear"):
        get_inputs(model, x, y, InputSettings(), cache=tmp_path if cache else False)


@pytest.mark.parametrize(
    ("make_model", "shape"),
    [(resnet20, (4, 3, 28, 28)), (tiny_model, (4, 1, 7, 7))],
    ids=["resnet20-3-channels", "tiny-7x7"],
)
def test_a_batch_that_does_not_fit_the_model_is_rejected(make_model, shape, tmp_path):
    torch.manual_seed(0)
    model = make_model()
    x = torch.randn(shape)
    y = torch.zeros(shape[0], dtype=torch.long)
    for cache in (False, tmp_path):
        with pytest.raises(ValueError, match=r"shape \(4, \d, \d+, \d+\)"):
            get_inputs(model, x, y, InputSettings(), cache=cache)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["G", "H", "Ga"])
def test_missing_labels_are_rejected_when_needed(batch, name, tmp_path):
    x, _ = batch
    for cache in (False, tmp_path):
        with pytest.raises(ValueError, match="labels"):
            get_inputs(tiny_model(), x, None, InputSettings(names=("W", name)), cache=cache)


def test_labels_are_not_needed_for_label_free_inputs(batch, tmp_path):
    x, y = batch
    model = tiny_model()
    settings = InputSettings(names=NO_LABELS)
    without = get_inputs(model, x, None, settings, cache=tmp_path)
    with_labels = compute_inputs(model, x, y, settings)
    assert all(set(t) == set(NO_LABELS) for t in without.tensors)
    assert_same_tensors(without, with_labels)


@pytest.mark.parametrize(
    "labels",
    [torch.zeros(15, dtype=torch.long), torch.zeros(16), torch.zeros(16, 1, dtype=torch.long)],
    ids=["short", "float", "2d"],
)
def test_malformed_labels_are_rejected(batch, labels):
    x, _ = batch
    with pytest.raises(ValueError, match="labels"):
        compute_inputs(tiny_model(), x, labels, InputSettings(names=("G",)))


@pytest.mark.parametrize(
    "kwargs",
    [{"names": ("W", "Hessian")}, {"candidates": (1, 4)}, {"candidates": ()}],
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match="Hessian|candidates"):
        InputSettings(**kwargs)


# ----------------------------------------------------------------------------- memory


MEMORY_PROBE = """
import gc, json, sys
import psutil, torch
from benchmark.data import calibration_batch
from benchmark.models import resnet20
from primitives.inputs import INPUT_NAMES, InputSettings, compute_inputs

torch.manual_seed(0)
model = resnet20()
x, y = calibration_batch(128, seed=0)
gc.collect()


def hwm():  # peak RSS of this process image (VmHWM, kB): unlike ru_maxrss, not inherited
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


rss_before = psutil.Process().memory_info().rss
peak_before = hwm()
inputs = compute_inputs(model, x, y, InputSettings(hutchinson_samples=1))
peak = hwm()
json.dump({
    "layers": inputs.num_layers,
    "all_names": all(set(t) == set(INPUT_NAMES) for t in inputs.tensors),
    "d_shape": list(inputs.tensors[0]["D"].shape),
    "a_shape": list(inputs.tensors[-1]["A"].shape),
    "nbytes": inputs.nbytes(),
    "rss_before": rss_before, "peak_before": peak_before, "peak": peak,
    "rss_after": psutil.Process().memory_info().rss,
}, sys.stdout)
"""


def test_resnet20_inputs_fit_in_memory():
    """All inputs of a random-init ResNet-20 on 128 images: < 2 GB stored, < 2 GB RSS growth.

    One Hutchinson sample: the peak comes from the retained double-backward graph, which is
    the same for any sample count. Measured in a fresh process (``VmHWM``), so the peak RSS
    belongs to this computation and not to earlier tests (``ru_maxrss`` would even carry
    the parent's peak across ``exec``).
    """
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    r = json.loads(out.stdout)
    assert r["layers"] == 20 and r["all_names"]
    assert r["d_shape"] == [4, 128, 16, 28, 28] and r["a_shape"] == [1, 128, 10]
    assert 1e8 < r["nbytes"] < 2e9
    assert r["peak"] > r["peak_before"]  # the computation set the process's peak
    assert r["peak"] - r["rss_before"] < 2e9
    assert r["rss_after"] - r["rss_before"] < 2e9


def test_linear_layers_on_token_tensors_without_batchnorm():
    """The ViT: Linear layers on [N, tokens, dim] tensors, no BatchNorm to fold.

    ``D`` of a layer is the change of its output when only its weight is quantized,
    checked against a forward pass with that weight swapped in.
    """
    from benchmark.models import MODELS
    from benchmark.quantizers import quantizable_layers

    torch.manual_seed(0)
    model = MODELS["vit"]().eval()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    inputs = compute_inputs(model, x, y, InputSettings(names=("A", "Ga", "G", "H", "Wq", "D")))
    layers = quantizable_layers(model)
    i = next(j for j, (n, _) in enumerate(layers) if n.endswith("mlp.0"))
    mod = layers[i][1]
    t = inputs.tensors[i]
    assert t["A"].shape == (1, 4, 49, 128) and t["D"].shape == (4, 4, 49, 128)
    assert torch.isfinite(t["H"]).all() and torch.isfinite(t["Ga"]).all()
    seen = {}
    handle = mod.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out.detach()))
    with torch.no_grad():
        model(x)
        ref = seen["out"]
        w = mod.weight.detach().clone()
        mod.weight.copy_(t["Wq"][0])
        model(x)
        mod.weight.copy_(w)
    handle.remove()
    torch.testing.assert_close(t["D"][0], seen["out"] - ref, rtol=1e-4, atol=1e-5)
