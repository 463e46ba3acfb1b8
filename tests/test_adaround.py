"""AdaRound: learned rounding per (layer, bit), its cache, and its use in PTQ and inputs."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from allocate_tiny import tiny_net

from benchmark.adaround import (
    AdaRounder,
    AdaRoundSettings,
    RoundingCache,
    layer_inputs,
    recon_error,
)
from benchmark.bench import Bench, BenchError, build_bench
from benchmark.data import calibration_batch
from benchmark.ptq import DEFAULT_BITS, QuantSim, fold_bn
from benchmark.quantizers import (
    mse_weight_scales,
    quantize_weight,
    state_fingerprint,
    weight_qrange,
)
from primitives.inputs import InputSettings, compute_inputs

FAST = AdaRoundSettings(iterations=200, images=64, batch_size=16)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def resnet_rounder(resnet20_trained) -> AdaRounder:
    """The default-settings AdaRounder of the shipped ResNet-20 (reads the shipped cache)."""
    folded = fold_bn(resnet20_trained, calibration_batch(8, 0)[0])
    return AdaRounder(folded, 100, fingerprint=state_fingerprint(resnet20_trained))


def test_shipped_resnet20_cache_is_complete(resnet_rounder):
    # The shipped AdaRound bench and the tests below rely on this artefact matching the code.
    assert resnet_rounder.missing(DEFAULT_BITS) == []
    assert resnet_rounder.cache.path.name.startswith("adaround-")


@pytest.fixture(scope="module")
def heldout_layer_inputs(resnet_rounder) -> list:
    """Each layer's inputs on images 256..511 of the calibration permutation: never seen by
    AdaRound (0..255)."""
    held = calibration_batch(512, 0)[0][256:]
    assert not any(torch.equal(held[0], im) for im in resnet_rounder.images)
    return layer_inputs(resnet_rounder.model, resnet_rounder.layers, held)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_resnet20_adaround_beats_nearest_on_heldout_images(
    resnet_rounder, heldout_layer_inputs, bits
):
    inputs = heldout_layer_inputs
    worse = []
    for i, layer in enumerate(resnet_rounder.layers):
        w_ada = resnet_rounder.weight(i, bits)
        w_near = quantize_weight(layer.weight, bits)
        e_ada = recon_error(layer, inputs[i], w_ada)
        e_near = recon_error(layer, inputs[i], w_near)
        if e_ada > e_near:
            worse.append((i, e_ada, e_near))
    assert worse == []


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_learned_rounding_moves_each_weight_to_a_neighbouring_grid_point(resnet_rounder, bits):
    qmax = weight_qrange(bits)
    for i, layer in enumerate(resnet_rounder.layers):
        w = layer.weight.detach()
        s = mse_weight_scales(w, bits).reshape(-1, *([1] * (w.ndim - 1)))
        levels = resnet_rounder.weight(i, bits) / s
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        lo = torch.clamp(torch.floor(w / s), -qmax, qmax)
        hi = torch.clamp(torch.floor(w / s) + 1, -qmax, qmax)
        on_lo = (levels.round() - lo).abs() < 0.5
        on_hi = (levels.round() - hi).abs() < 0.5
        assert bool((on_lo | on_hi).all()), f"layer {i} at {bits} bits left its neighbours"


def test_learn_on_a_fresh_model_improves_calibration_error_and_persists(cache_env):
    net = tiny_net()
    x = calibration_batch(64, 3)[0]
    folded = fold_bn(net, x[:4])
    rounder = AdaRounder(folded, 100, FAST, images=x)
    assert rounder.missing([2, 4]) == [(0, 2), (0, 4), (1, 2), (1, 4), (2, 2), (2, 4)]
    figures = rounder.prepare([2, 4], progress=False)
    assert figures["learned"] == 6 and rounder.missing([2, 4]) == []
    for (layer, bits), stats in rounder.cache.stats.items():
        assert stats["calib_error"] <= stats["nearest_error"] + 1e-9, (layer, bits)
        assert 0.0 <= stats["flipped"] <= 1.0
    assert rounder.cache.path.is_file() and rounder.cache.path.parent == cache_env / "adaround"
    # A second rounder with the same content key reads the saved masks instead of learning.
    again = AdaRounder(folded, 100, FAST, images=x)
    assert again.missing([2, 4]) == []
    for key, mask in rounder.cache.masks.items():
        assert torch.equal(again.cache.masks[key], mask)
    # Different settings or images: a different key, nothing reused.
    other = AdaRounder(folded, 100, AdaRoundSettings(iterations=201, images=64, batch_size=16),
                       images=x)  # fmt: skip
    assert other.key != rounder.key and other.missing([2]) == [(0, 2), (1, 2), (2, 2)]


def test_learning_is_reproducible(cache_env):
    net = tiny_net()
    x = calibration_batch(64, 3)[0]
    folded = fold_bn(net, x[:4])
    a = AdaRounder(folded, 100, FAST, images=x)
    layer = a.layers[1]
    inputs = layer_inputs(a.model, a.layers, x)[1]
    from benchmark.adaround import learn_rounding

    scale = mse_weight_scales(layer.weight, 3)
    m1, _ = learn_rounding(layer, inputs, scale, weight_qrange(3), FAST)
    m2, _ = learn_rounding(layer, inputs, scale, weight_qrange(3), FAST)
    assert torch.equal(m1, m2)


def test_corrupt_cache_file_is_a_clear_error(cache_env):
    net = tiny_net()
    x = calibration_batch(64, 3)[0]
    rounder = AdaRounder(fold_bn(net, x[:4]), 100, FAST, images=x)
    rounder.mask(0, 2)
    rounder.cache.path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt.*delete it"):
        RoundingCache(rounder.key)


def test_too_few_calibration_images_is_a_clear_error():
    with pytest.raises(ValueError, match="AdaRound needs at least one batch.*--adaround-images"):
        AdaRoundSettings(images=16, batch_size=32)
    net = tiny_net()
    x = calibration_batch(8, 0)[0]
    with pytest.raises(ValueError, match="at least 16 calibration images, got 8"):
        AdaRounder(fold_bn(net, x[:4]), 100, FAST, images=x)


def test_quantsim_adaround_stitches_learned_weights(cache_env):
    net = tiny_net()
    calib = calibration_batch(64, 3)[0]
    sim = QuantSim(net, calib, rounding="adaround", adaround=FAST)
    near = QuantSim(net, calib)
    assert sim.rounder is not None and near.rounder is None
    sim.set_config([2, 4, 8], [8, 8, 8])
    for i, b in enumerate([2, 4, 8]):
        assert torch.equal(sim.layers[i][1].weight, sim.rounder.weight(i, b))
    # Stitching: a layer's weight depends only on its own bit-width.
    w0 = sim.layers[0][1].weight.clone()
    sim.set_config([2, 8, 2], [8, 8, 8])
    assert torch.equal(sim.layers[0][1].weight, w0)
    near.set_config([2, 8, 2], [8, 8, 8])
    pairs = zip(sim.layers, near.layers, strict=True)
    assert any(not torch.equal(a.weight, b.weight) for (_, a), (_, b) in pairs)
    with pytest.raises(ValueError, match="unknown rounding 'up'"):
        QuantSim(net, calib, rounding="up")


def test_inputs_wq_follow_the_rounding(cache_env):
    net = tiny_net()
    x, y = calibration_batch(32, 1)
    names = ("W", "Wq", "E")
    near = compute_inputs(net, x, y, InputSettings(candidates=(2, 8), names=names))
    ada = compute_inputs(
        net,
        x,
        y,
        InputSettings(
            candidates=(2, 8), names=names, rounding="adaround", adaround=FAST
        ),  # fmt: skip
    )
    differs = [not torch.equal(a["Wq"], n["Wq"]) for a, n in zip(ada.tensors, near.tensors,
                                                                  strict=True)]  # fmt: skip
    assert any(differs)
    for t in ada.tensors:
        # E, W and Wq are each rounded to float32 from float64: E = W - Wq up to their ulps
        ulp = torch.finfo(torch.float32).eps * t["W"].abs().max()
        assert (t["E"] - (t["W"] - t["Wq"])).abs().max() <= ulp
    with pytest.raises(ValueError, match="unknown rounding"):
        InputSettings(rounding="stochastic")


def test_input_cache_keys_of_nearest_rounding_are_unchanged():
    from primitives.inputs import cache_key

    net = tiny_net()
    x, y = calibration_batch(8, 0)
    near = cache_key(net, x, y, InputSettings())
    ada = cache_key(net, x, y, InputSettings(rounding="adaround"))
    assert near != ada
    # Nearest-rounding keys predate the rounding option (existing caches stay valid).
    assert near == cache_key(net, x, y, InputSettings(rounding="nearest"))


def test_adaround_bench_records_rounding_and_refuses_the_other(tmp_path, cache_env):
    out = tmp_path / "ada.sqlite"
    result = build_bench("resnet20", 1, 0, out, rounding="adaround", progress=False,
                         test_images=500)  # fmt: skip
    assert result["configs"] == 5
    bench = Bench.open(out)
    assert bench.rounding == "adaround" and bench.adaround == AdaRoundSettings()
    assert bench.meta["quantizer"]["adaround"]["iterations"] == AdaRoundSettings().iterations
    with pytest.raises(BenchError, match="built with --rounding adaround, not nearest"):
        build_bench("resnet20", 1, 0, out, progress=False, test_images=500)
    with pytest.raises(BenchError, match="--rounding adaround"):
        bench.check_rounding("nearest")
    bench.check_rounding("adaround")
    # Same uniform W8 config as a nearest bench, measured with learned rounding.
    with sqlite3.connect(out) as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 5
    w4 = bench.query([4] * bench.num_layers)["top1"]
    assert np.isfinite(w4) and 10.0 <= w4 <= 100.0


def test_score_refuses_a_bench_of_the_other_rounding(small_bench, capsys, monkeypatch):
    from emq.cli import main

    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    code = main(["score", "--proxy", "hawq_v3", "--model", "resnet20",
                 "--bench", str(small_bench["path"]), "--rounding", "adaround"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("emq: error:") and len(err.strip().splitlines()) == 1
    assert "built with --rounding nearest, not adaround" in err


def test_simulator_inputs_carry_the_learned_rounding_to_workers(cache_env):
    # What a Dask worker receives for an AdaRound bench: the masks and AdaRound's images,
    # so it needs neither the rounding cache nor the dataset on its disk.
    from benchmark.bench import BenchSpec, SimulatorInputs, _build_simulator, _simulator
    from benchmark.models import checkpoint_path

    spec = BenchSpec("resnet20", str(checkpoint_path("resnet20").resolve()),
                     rounding="adaround", adaround=AdaRoundSettings())  # fmt: skip
    inputs = SimulatorInputs.load(spec, _simulator(spec)[0].rounder)
    assert len(inputs.rounding_masks) == 20 * len(DEFAULT_BITS)
    assert inputs.adaround_images.shape[0] == AdaRoundSettings().images
    sim, _, _ = _build_simulator(inputs)
    assert sim.rounder.missing(DEFAULT_BITS) == []
    sim.set_config([2] * 20, [8] * 20)
    assert torch.equal(sim.layers[5][1].weight, sim.rounder.weight(5, 2))
