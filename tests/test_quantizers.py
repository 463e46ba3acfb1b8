"""The one weight quantizer: ``weight_quantizer`` chooses, QuantSim and the inputs share it."""

from __future__ import annotations

import pytest
import torch
from allocate_tiny import tiny_net

import primitives.inputs as inputs_module
from benchmark.adaround import AdaRounder, AdaRoundSettings, weight_quantizer
from benchmark.data import calibration_batch
from benchmark.ptq import DEFAULT_BITS, QuantSim, fold_bn
from benchmark.quantizers import NearestQuantizer, quantizable_layers, quantize_weight
from primitives.inputs import InputSettings, compute_inputs

FAST = AdaRoundSettings(iterations=20, images=32, batch_size=16)  # the plumbing, not the rounding


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return calibration_batch(64, 3)


@pytest.fixture
def spy(monkeypatch) -> list:
    """Every quantizer ``compute_inputs`` gets from the factory, in order."""
    made = []

    def recording(*args, **kwargs):
        made.append(weight_quantizer(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(inputs_module, "weight_quantizer", recording)
    return made


def test_nearest_factory_is_quantize_weight_exactly(batch):
    folded = fold_bn(tiny_net(), batch[0][:4])
    q = weight_quantizer("nearest", folded, clip_grid=50)
    assert isinstance(q, NearestQuantizer)
    for i, (_, m) in enumerate(quantizable_layers(folded)):
        for b in DEFAULT_BITS:
            assert torch.equal(q.weight(i, b), quantize_weight(m.weight, b, 50))
    assert q.prepare(DEFAULT_BITS) == {"learned": 0, "seconds": 0.0}
    # The key is a content identity: same weights and grid, same key; another grid, another.
    assert q.key == weight_quantizer("nearest", folded, clip_grid=50).key
    assert q.key != weight_quantizer("nearest", folded).key


def test_nearest_keeps_its_own_weights(batch):
    """Rewriting the model's weights in place (as QuantSim does) never changes Q_b(W)."""
    folded = fold_bn(tiny_net(), batch[0][:4])
    q = weight_quantizer("nearest", folded)
    before = q.weight(0, 4)
    with torch.no_grad():
        quantizable_layers(folded)[0][1].weight.mul_(3.0)
    assert torch.equal(q.weight(0, 4), before)


def assert_same_up_to_rounding(a: torch.Tensor, b: torch.Tensor) -> None:
    """Quantized weights equal but for float32 rounding (a few ulps of the largest)."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max() <= 4 * torch.finfo(torch.float32).eps * b.abs().max()


def test_simulator_and_inputs_share_the_nearest_quantizer(batch, spy):
    net = tiny_net()
    sim = QuantSim(net, batch[0])
    assert isinstance(sim.quantizer, NearestQuantizer) and sim.rounder is None
    inputs = compute_inputs(net, *batch, InputSettings(names=("Wq",)))
    # The inputs quantize the float64 fold (then round): the same quantizer and grid points,
    # equal to the simulator's float32 weights up to float32 rounding.
    assert [type(q) for q in spy] == [type(sim.quantizer)]
    assert spy[0].clip_grid == sim.quantizer.clip_grid
    for i, t in enumerate(inputs.tensors):
        for j, b in enumerate(DEFAULT_BITS):
            assert_same_up_to_rounding(t["Wq"][j], sim.quantized_weight(i, b))


def test_simulator_and_inputs_share_the_adaround_quantizer(batch, spy, tmp_path, monkeypatch):
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path))
    net = tiny_net()
    settings = InputSettings(candidates=(2, 4), names=("Wq",), rounding="adaround", adaround=FAST)
    inputs = compute_inputs(net, *batch, settings)
    # Built after the inputs learned their rounding: the simulator reads it from the cache.
    sim = QuantSim(net, batch[0], rounding="adaround", adaround=FAST)
    assert isinstance(sim.quantizer, AdaRounder) and sim.rounder is sim.quantizer
    assert [type(q) for q in spy] == [AdaRounder]
    assert spy[0].key == sim.quantizer.key  # the same learned-rounding cache
    assert sim.quantizer.missing((2, 4)) == []
    for i, t in enumerate(inputs.tensors):
        for j, b in enumerate((2, 4)):
            assert_same_up_to_rounding(t["Wq"][j], sim.quantized_weight(i, b))


def test_unknown_rounding_is_a_clear_error(batch):
    folded = fold_bn(tiny_net(), batch[0][:4])
    with pytest.raises(ValueError, match="unknown rounding 'stochastic'.*nearest, adaround"):
        weight_quantizer("stochastic", folded)
    with pytest.raises(ValueError, match="unknown rounding 'stochastic'"):
        QuantSim(tiny_net(), batch[0], rounding="stochastic")
