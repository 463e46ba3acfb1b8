"""Tests for emq.baselines: each score table against its formula computed by hand.

The hand computations use a functional forward pass of a tiny conv+BN+ReLU+linear net whose
BatchNorm is folded here, by hand, and plain torch ops - never the helpers under test.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.bench import Bench, build_bench
from benchmark.data import calibration_batch
from benchmark.models import MODELS, load_model
from benchmark.quantizers import quantize_weight
from emq.baselines import BASELINES, UnknownBaselineError, get_baseline
from emq.baselines.table import evaluate_baselines, run_baselines
from emq.cli import main
from emq.metrics import CORR_KEYS
from emq.scoring import ScoreContext
from primitives.inputs import InputSettings

BITS = (2, 3, 4, 8)
HUTCHINSON = 4
# HAWQ's power iteration (20 products, stop at 1e-3 relative change) against the exact top
# eigenvalue: the Rayleigh quotient converges from below, slowly when the top two eigenvalues
# are close, so the default settings are checked to 5 % and a long run to 0.1 %.
HAWQ_RTOL_DEFAULT = 0.05
HAWQ_RTOL_LONG = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


class Tiny(nn.Module):
    """conv(1->4) + BN + ReLU, conv(4->6, stride 2) + BN + ReLU, global mean, linear(6->10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def tiny_forward(ws, bs, x, act=F.relu):
    """The folded tiny net as a function of its weights: (logits, each layer's output)."""
    a1 = F.conv2d(x, ws[0], bs[0], padding=1)
    a2 = F.conv2d(act(a1), ws[1], bs[1], stride=2, padding=1)
    a3 = F.linear(act(a2).mean((2, 3)), ws[2], bs[2])
    return a3, [a1, a2, a3]


@pytest.fixture(scope="module")
def tiny():
    """(model, x, y, folded weights, folded biases, context), seeded, BN statistics random."""
    torch.manual_seed(0)
    model = Tiny()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            c = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(c, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(c, generator=gen))
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
    model.eval()
    x = torch.randn(8, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    ws, bs = [], []
    for conv, bn in ((model.conv1, model.bn1), (model.conv2, model.bn2)):
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        ws.append((conv.weight * factor.reshape(-1, 1, 1, 1)).detach())
        bs.append((bn.bias - bn.running_mean * factor).detach())
    ws.append(model.fc.weight.detach().clone())
    bs.append(model.fc.bias.detach().clone())
    settings = InputSettings(candidates=BITS, hutchinson_samples=HUTCHINSON)
    ctx = ScoreContext(model, x, y, settings, cache=False)
    return model, x, y, ws, bs, ctx


def bit_weighted(values):
    return np.outer(np.asarray(values, dtype=np.float64), np.asarray(BITS, dtype=np.float64))


def loss_of(ws, bs, x, y):
    return F.cross_entropy(tiny_forward(ws, bs, x)[0], y)


@pytest.fixture(scope="module")
def hutchinson_traces(tiny):
    """Per-layer Hutchinson trace estimates with the inputs' Rademacher draws, from exact
    Hessian-vector products of the full weight vector (torch.autograd.functional.hvp)."""
    _, x, y, ws, bs, ctx = tiny
    gen = torch.Generator().manual_seed(ctx.settings.hutchinson_seed)
    acc = [torch.zeros_like(w) for w in ws]
    for _ in range(HUTCHINSON):
        zs = [torch.randint(0, 2, w.shape, generator=gen).float() * 2 - 1 for w in ws]
        _, hz = torch.autograd.functional.hvp(
            lambda *w: loss_of(list(w), bs, x, y), tuple(ws), tuple(zs)
        )
        for a, z, h in zip(acc, zs, hz, strict=True):
            a += z * h
    return [float(a.sum()) / HUTCHINSON for a in acc]


# ----------------------------------------------------------------------------- registry


def test_registry_holds_every_baseline_of_the_issue():
    expected = {
        "bparams", "bops", "hawq", "hawq_v2", "hawq_v3", "ompq", "qe", "snip", "synflow",
        "emq", "sqnr_measured", "dloss_measured", "random", "kl_measured",
    }  # fmt: skip
    assert set(BASELINES) == expected
    measured = {"sqnr_measured", "dloss_measured", "kl_measured"}
    assert {n for n, b in BASELINES.items() if b.measured} == measured
    assert {n for n, b in BASELINES.items() if b.joint} == {"kl_measured"}  # whole configs
    for b in BASELINES.values():
        assert b.doc and b.fn.__doc__


def test_unknown_baseline_and_option_are_clear_errors(tiny):
    with pytest.raises(UnknownBaselineError, match=r"'nope'.*valid baselines: bparams"):
        get_baseline("nope")
    assert issubclass(UnknownBaselineError, ValueError)
    with pytest.raises(ValueError, match=r"no option\(s\) \['gamma'\].*\['beta'\]"):
        get_baseline("ompq")(tiny[-1], gamma=1.0)


# ----------------------------------------------------------------------------- tables by hand


def test_bparams_and_bops(tiny):
    ctx = tiny[-1]
    params = [1 * 4 * 9, 4 * 6 * 9, 6 * 10 + 10]
    macs = [4 * 8 * 8 * (1 * 9), 6 * 4 * 4 * (4 * 9), 10 * 6]
    np.testing.assert_array_equal(get_baseline("bparams")(ctx), bit_weighted(params))
    np.testing.assert_array_equal(get_baseline("bops")(ctx), bit_weighted([8 * m for m in macs]))
    np.testing.assert_array_equal(
        get_baseline("bops")(ctx, act_bits=4), bit_weighted([4 * m for m in macs])
    )


def exact_top_eigenvalues(tiny):
    _, x, y, ws, bs, _ = tiny
    tops = []
    for i, w in enumerate(ws):

        def f(v, i=i):
            return loss_of([v if j == i else u for j, u in enumerate(ws)], bs, x, y)

        h = torch.autograd.functional.hessian(f, w).reshape(w.numel(), w.numel())
        ev = torch.linalg.eigvalsh(h.double())
        tops.append(float(ev[ev.abs().argmax()]))
    return np.asarray(tops)


def test_hawq_power_iteration_matches_exact_hessian_eigenvalue(tiny):
    ctx = tiny[-1]
    exact = bit_weighted(exact_top_eigenvalues(tiny))
    np.testing.assert_allclose(get_baseline("hawq")(ctx), exact, rtol=HAWQ_RTOL_DEFAULT)
    long = get_baseline("hawq")(ctx, iters=2000, tol=0.0)
    np.testing.assert_allclose(long, exact, rtol=HAWQ_RTOL_LONG)
    np.testing.assert_array_equal(get_baseline("hawq")(ctx), get_baseline("hawq")(ctx))


def test_hawq_v2_is_bit_weighted_hutchinson_trace(tiny, hutchinson_traces):
    table = get_baseline("hawq_v2")(tiny[-1])
    np.testing.assert_allclose(table, bit_weighted(hutchinson_traces), rtol=1e-4, atol=1e-7)


def test_hawq_v3_is_negated_trace_times_quantization_error(tiny, hutchinson_traces):
    ws = tiny[3]
    expected = [
        [
            -hutchinson_traces[i] / w.numel() * float(((w - quantize_weight(w, b)) ** 2).sum())
            for b in BITS
        ]
        for i, w in enumerate(ws)
    ]
    table = get_baseline("hawq_v3")(tiny[-1])
    np.testing.assert_allclose(table, expected, rtol=1e-4, atol=1e-12)


def test_ompq_is_exp_of_cka_orthogonality(tiny):
    _, x, y, ws, bs, ctx = tiny
    with torch.no_grad():
        feats = [a.reshape(len(x), -1).double() for a in tiny_forward(ws, bs, x)[1]]
    feats = [f - f.mean(0) for f in feats]

    def cka(a, b):  # feature-space form: ||A^T B||^2 / (||A^T A|| ||B^T B||)
        return float(
            torch.linalg.norm(a.T @ b) ** 2
            / (torch.linalg.norm(a.T @ a) * torch.linalg.norm(b.T @ b))
        )

    n = len(feats)
    gamma = [sum(cka(feats[i], feats[j]) for j in range(n) if j != i) for i in range(n)]
    theta = [math.exp(-2.0 * g) / n for g in gamma]
    table = get_baseline("ompq")(ctx, beta=2.0)
    np.testing.assert_allclose(table, bit_weighted(theta), rtol=1e-5)


def test_qe_is_bit_weighted_gaussian_entropy(tiny):
    _, x, y, ws, bs, ctx = tiny
    with torch.no_grad():
        outs = tiny_forward(ws, bs, x)[1]
    entropy = [
        0.5 * math.log(2 * math.pi * math.e * float(a.double().var(unbiased=False))) for a in outs
    ]
    expected = bit_weighted(entropy)
    # atol: an entropy near 0 is a cancellation inside the log; the inputs (float64, rounded)
    # and this float32 forward differ by float32 rounding relative to the variance itself
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(get_baseline("qe")(ctx), expected, rtol=1e-5, atol=atol)


def test_snip_is_bit_weighted_gradient_times_weight(tiny):
    _, x, y, ws, bs, ctx = tiny
    params = [w.clone().requires_grad_(True) for w in ws]
    grads = torch.autograd.grad(loss_of(params, bs, x, y), params)
    saliency = [float((g * w).abs().sum()) for g, w in zip(grads, ws, strict=True)]
    np.testing.assert_allclose(get_baseline("snip")(ctx), bit_weighted(saliency), rtol=1e-5)


def virtual_gradient(tiny):
    """Synflow's dR/dW: |theta| network without ReLU, input of ones, R = sum of logits."""
    ws, bs = tiny[3], tiny[4]
    params = [w.double().abs().requires_grad_(True) for w in ws]
    out, _ = tiny_forward(params, [b.double().abs() for b in bs], torch.ones(1, 1, 8, 8).double(),
                          act=lambda t: t)  # fmt: skip
    return [g.float() for g in torch.autograd.grad(out.sum(), params)]


def test_synflow_is_bit_weighted_virtual_gradient_times_weight(tiny):
    ws, ctx = tiny[3], tiny[-1]
    saliency = [float((v * w).abs().sum()) for v, w in zip(virtual_gradient(tiny), ws, strict=True)]
    np.testing.assert_allclose(get_baseline("synflow")(ctx), bit_weighted(saliency), rtol=1e-5)


def test_emq_published_proxy(tiny):
    ws, ctx = tiny[3], tiny[-1]
    expected = []
    for v, w in zip(virtual_gradient(tiny), ws, strict=True):
        row = []
        for b in BITS:
            vb = (v * b).reshape(-1)
            logs = torch.where(vb == 0, torch.zeros_like(vb), torch.log(vb.abs()))
            left = torch.exp(logs - logs.max()) / torch.exp(logs - logs.max()).sum()
            right = torch.sqrt(torch.clamp(w * b, min=0)).reshape(-1)
            row.append(float((left * right).mean()))
        expected.append(row)
    np.testing.assert_allclose(get_baseline("emq")(ctx), expected, rtol=1e-4)


def test_random_is_seeded(tiny):
    ctx = tiny[-1]
    rnd = get_baseline("random")
    np.testing.assert_array_equal(rnd(ctx, seed=3), np.random.default_rng(3).random((3, 4)))
    np.testing.assert_array_equal(rnd(ctx), rnd(ctx, seed=0))
    assert not np.array_equal(rnd(ctx, seed=0), rnd(ctx, seed=1))


# ----------------------------------------------------------------------------- measured


def single_layer_logits(tiny, layer, bits):
    _, x, _, ws, bs, _ = tiny
    quantized = [quantize_weight(w, bits) if i == layer else w for i, w in enumerate(ws)]
    with torch.no_grad():
        return tiny_forward(quantized, bs, x)[0]


def test_sqnr_measured_matches_direct_single_layer_sqnr(tiny):
    _, x, y, ws, bs, ctx = tiny
    with torch.no_grad():
        ref = tiny_forward(ws, bs, x)[0].double()
    expected = [
        [
            10
            * math.log10(
                float((ref**2).sum()) / float(((ref - single_layer_logits(tiny, i, b)) ** 2).sum())
            )
            for b in BITS
        ]
        for i in range(len(ws))
    ]
    table = get_baseline("sqnr_measured")(ctx)
    np.testing.assert_allclose(table, expected, rtol=1e-3)
    assert np.all(np.diff(table, axis=1) > 0)  # more bits, less noise


def test_dloss_measured_is_negated_loss_increase(tiny):
    _, x, y, ws, bs, ctx = tiny
    with torch.no_grad():
        fp = float(loss_of(ws, bs, x, y))
    expected = [
        [-(float(F.cross_entropy(single_layer_logits(tiny, i, b), y)) - fp) for b in BITS]
        for i in range(len(ws))
    ]
    np.testing.assert_allclose(get_baseline("dloss_measured")(ctx), expected, rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------- bench and CLI


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory, one_thread):
    """A ResNet-20 bench of a random-init checkpoint: 4 uniform + 2 random configurations
    on the first 500 test images."""
    folder = tmp_path_factory.mktemp("baselines")
    torch.manual_seed(0)
    ckpt = folder / "resnet20-random.pt"
    torch.save(MODELS["resnet20"]().state_dict(), ckpt)
    path = folder / "bench.sqlite"
    build_bench("resnet20", n_configs=2, seed=0, out=path, checkpoint=ckpt, progress=False,
                test_images=500)  # fmt: skip
    return Bench.open(path), ckpt


def small_context(bench, ckpt):
    x, y = calibration_batch(16, 0)
    settings = InputSettings(candidates=bench.candidates, hutchinson_samples=2)
    return ScoreContext(load_model("resnet20", ckpt), x, y, settings, cache=False)


def test_run_baselines_writes_table_plot_and_score_tables(small_bench, tmp_path):
    bench, ckpt = small_bench
    out = tmp_path / "out"
    rows = run_baselines(
        bench, "all", out, context=small_context(bench, ckpt), options={"hawq": {"iters": 3}}
    )
    assert [r["baseline"] for r in rows] == list(BASELINES)
    with open(out / "baselines.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["baseline"] for r in table] == list(BASELINES)
    for r in table:
        assert int(r["configs"]) == len(bench)
        for k in CORR_KEYS:
            v = float(r[k])
            assert math.isnan(v) or -1.0 <= v <= 1.0
        assert float(r["one_time_s"]) >= float(r["inputs_s"]) >= 0.0
        assert float(r["per_config_s"]) >= 0.0
        assert (float(r["inputs_s"]) > 0) == bool(BASELINES[r["baseline"]].inputs)
    assert (out / "baselines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "tables.npz") as tables:
        assert tables["sqnr_measured"].shape == (bench.num_layers, len(bench.candidates))


def test_run_baselines_heldout_split_and_model_check(small_bench, tmp_path):
    bench, ckpt = small_bench
    ctx = small_context(bench, ckpt)
    rows = run_baselines(bench, out_dir=tmp_path, names=["bparams", "random"], context=ctx)
    assert [r["configs"] for r in rows] == [len(bench.split(0)[1])] * 2
    torch.manual_seed(1)
    other = ScoreContext(MODELS["resnet20"]().eval(), ctx.x, ctx.y, ctx.settings, cache=False)
    with pytest.raises(ValueError, match="differ from those"):
        run_baselines(bench, out_dir=tmp_path, names=["bparams"], context=other)
    with pytest.raises(ValueError, match="unknown split"):
        run_baselines(bench, "train", tmp_path, context=ctx)


def test_cli_json_and_table(vgg_bench_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "cache"))
    argv = ["baselines", "--bench", str(vgg_bench_copy), "--split", "all",
            "--batch", "16", "--only", "bparams,sqnr_measured", "--out", str(tmp_path)]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["baseline"] for r in result["baselines"]] == ["bparams", "sqnr_measured"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "S@20%" in text and "per-config s" in text and "sqnr_measured *" in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["baselines", "--bench", str(tmp_path / "missing.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emq: error:") and "does not exist" in err[0]
    assert main(["baselines", "--bench", str(tmp_path / "missing.sqlite"), "--only", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown baseline 'nope'; valid baselines: bparams" in err[0]


def test_baselines_on_a_chunked_batch_average_the_training_free_tables(vgg_bench_copy):
    """More images than one chunk: each training-free baseline's table is the mean of its
    tables on the chunks (as ``emq score``); a measured one runs on the whole batch."""
    from emq.scoring import score_table

    bench = Bench.open(vgg_bench_copy)
    model = load_model(bench.model)
    x, y = calibration_batch(24, 0)
    settings = InputSettings(candidates=bench.candidates, names=("W", "E", "H"))
    ctx = ScoreContext(model, x, y, settings, False, chunk=8)
    result = evaluate_baselines(bench, "all", ["hawq_v3", "sqnr_measured"], context=ctx)
    for name in ("hawq_v3", "sqnr_measured"):
        b = get_baseline(name)
        expected = score_table(b, ScoreContext(model, x, y, settings, False, chunk=8))
        np.testing.assert_allclose(result.tables[name], expected, rtol=1e-12)
    whole = get_baseline("sqnr_measured")(ScoreContext(model, x, y, settings, False))
    np.testing.assert_allclose(result.tables["sqnr_measured"], whole, rtol=1e-12)
    first = get_baseline("hawq_v3")(ScoreContext(model, x[:8], y[:8], settings, False))
    assert not np.allclose(result.tables["hawq_v3"], first)
