"""Known proxies are expressible in the search space: op-library graphs equal their formulas.

Each proxy is written as nested ``apply`` calls on one layer's inputs, reduced per layer with
``reduce_to_bits`` to a score table ``S[l, b]`` and summed over layers with ``config_scores``;
the same configuration scores are computed directly from the proxy's formula with plain
torch in float64, layer by layer, at each layer's bit-width.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data import calibration_batch
from benchmark.models import resnet20
from benchmark.ptq import DEFAULT_BITS
from benchmark.quantizers import quantize_weight
from emq.scoring import config_scores, reduce_to_bits
from primitives.inputs import InputSettings, LayerInputs, compute_inputs
from primitives.operations import apply

RTOL = 1e-5  # float32 graph against a float64 formula
SETTINGS = InputSettings(
    candidates=DEFAULT_BITS,
    hutchinson_samples=4,
    names=("W", "H", "V", "Ga", "E", "D", "b"),
)

Tensors = dict[str, torch.Tensor]


class SmallNet(nn.Module):
    """Two conv+BN+ReLU stages and a linear head on 1x8x8 images: three quantizable layers."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
        )
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def small_inputs() -> LayerInputs:
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        for bn in (model.features[1], model.features[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.25, 4.0)
    x, y = calibration_batch(16, seed=2)
    return compute_inputs(model, F.adaptive_avg_pool2d(x, 8), y, SETTINGS)


def resnet_inputs() -> LayerInputs:
    torch.manual_seed(0)
    x, y = calibration_batch(16, seed=2)
    return compute_inputs(resnet20().eval(), x, y, SETTINGS)


@pytest.fixture(scope="module", params=[small_inputs, resnet_inputs], ids=["small", "resnet20"])
def inputs(request) -> LayerInputs:
    return request.param()


# ----------------------------------------------------------------------------- the proxies
# Each: (graph over the op library, direct formula of one layer's term at one bit-width).


def hawq_v2_graph(t: Tensors) -> torch.Tensor:
    return apply("mul", apply("sum", t["H"]), t["b"])


def hawq_v2_term(t: Tensors, slot: int, bits: int) -> float:
    """Tr(H_l) * b_l."""
    return float(t["H"].double().sum()) * bits


def hawq_v3_graph(t: Tensors) -> torch.Tensor:
    return apply("mul", apply("to_mean_scalar", t["H"]), apply("sq_norm", t["E"]))


def hawq_v3_term(t: Tensors, slot: int, bits: int) -> float:
    """(Tr(H_l) / n_l) * ||W_l - Q_b(W_l)||^2, with Q_b from the PTQ quantizer."""
    h, w = t["H"].double(), t["W"][0]
    error = (w - quantize_weight(w, bits)).double()
    return float(h.sum() / h.numel() * error.square().sum())


def taylor_graph(t: Tensors) -> torch.Tensor:
    return apply("abs", apply("sum", apply("mul", t["Ga"], t["D"])))


def taylor_term(t: Tensors, slot: int, bits: int) -> float:
    """|sum(Ga_l * D_l[b])|: first-order estimate of the loss change."""
    return abs(float((t["Ga"][0].double() * t["D"][slot].double()).sum()))


def emq_graph(t: Tensors) -> torch.Tensor:
    branch1 = apply("softmax", apply("abslog", apply("mul", t["V"], t["b"])))
    branch2 = apply("sqrt", apply("relu", apply("mul", t["W"], t["b"])))
    return apply("mul", branch1, branch2)


def emq_term(t: Tensors, slot: int, bits: int) -> float:
    """mean(softmax(abslog(V*b)) * sqrt(relu(W*b))), softmax over all weight elements.

    ``abslog`` is the library's: log|x|, with 0 mapped to 0.
    """
    v = t["V"][0].double().flatten() * bits
    log_v = torch.where(v == 0, torch.zeros_like(v), torch.log(v.abs()))
    w = t["W"][0].double().flatten() * bits
    return float((torch.softmax(log_v, 0) * torch.sqrt(torch.clamp(w, min=0))).mean())


PROXIES: dict[str, tuple[Callable, Callable]] = {
    "hawq_v2": (hawq_v2_graph, hawq_v2_term),
    "hawq_v3": (hawq_v3_graph, hawq_v3_term),
    "taylor": (taylor_graph, taylor_term),
    "emq": (emq_graph, emq_term),
}


# ----------------------------------------------------------------------------- helpers


def configurations(num_layers: int, candidates: tuple[int, ...]) -> list[list[int]]:
    """Uniform configurations, two alternating ones, a staircase and a seeded random one."""
    low, high = min(candidates), max(candidates)
    rng = np.random.default_rng(0)
    return [
        *([b] * num_layers for b in candidates),
        [low if i % 2 else high for i in range(num_layers)],
        [high if i % 2 else low for i in range(num_layers)],
        [candidates[i % len(candidates)] for i in range(num_layers)],
        [int(b) for b in rng.choice(candidates, num_layers)],
    ]


def score_table(inputs: LayerInputs, graph: Callable) -> np.ndarray:
    """S[l, b]: the graph on each layer's inputs, reduced to one value per bit."""
    bits = len(inputs.candidates)
    rows = [reduce_to_bits(graph(t), bits).detach().double().numpy() for t in inputs.tensors]
    return np.stack(rows)


def direct_scores(inputs: LayerInputs, term: Callable, configs: list[list[int]]) -> np.ndarray:
    """sum_l term(layer l, its bit-width), straight from the formula."""
    slot = {b: i for i, b in enumerate(inputs.candidates)}
    return np.array(
        [
            sum(term(t, slot[b], b) for t, b in zip(inputs.tensors, config, strict=True))
            for config in configs
        ]
    )


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("proxy", sorted(PROXIES))
def test_proxy_graph_equals_its_formula(inputs, proxy):
    graph, term = PROXIES[proxy]
    configs = configurations(inputs.num_layers, inputs.candidates)
    table = score_table(inputs, graph)
    assert table.shape == (inputs.num_layers, len(inputs.candidates))
    assert np.isfinite(table).all()
    index = np.array([[inputs.candidates.index(b) for b in c] for c in configs])
    got = config_scores(table, index)
    expected = direct_scores(inputs, term, configs)
    # atol: a configuration's score can cancel to near zero (a sum of terms of both signs),
    # where the rounding of the float32 inputs is relative to the terms, not to the sum
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())
    # the configurations really are ranked: the comparison is not between constants
    assert len(np.unique(np.round(expected / np.abs(expected).max(), 6))) >= 4


def test_inputs_are_not_modified_by_the_graphs(inputs):
    """Evaluating every proxy leaves the shared inputs bitwise unchanged."""
    before = [{k: v.clone() for k, v in t.items()} for t in inputs.tensors]
    for graph, _ in PROXIES.values():
        score_table(inputs, graph)
    for t, t0 in zip(inputs.tensors, before, strict=True):
        for k, v in t0.items():
            assert torch.equal(t[k], v), k
