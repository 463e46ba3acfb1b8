"""The joint combination of a proxy ``revert(sq_norm(X))``: the layers' terms added before
the norm (``emq.graph.joint_scores``), the default proxy's way of ranking configurations in
``emq score`` (the allocators keep its table, the diagonal)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from allocate_tiny import tiny_net
from cli_checks import refused

from benchmark.data import calibration_batch
from benchmark.ptq import fold_bn
from benchmark.quantizers import quantizable_layers
from emq.allocate.budget import Budget
from emq.allocate.ilp import allocate_ilp
from emq.allocate.problem import AllocationProblem
from emq.allocate.sqnr import greedy_front
from emq.cli import main
from emq.export import export_proxy
from emq.genome import from_string
from emq.graph import (
    DEFAULT_CROSS,
    canonical,
    gram_scores,
    joint_gram,
    joint_scores,
    prefix_names,
    score_table,
)
from emq.proxy import DEFAULT_PROXY, ProxyScorer, load_proxy_document
from emq.scorers import resolve_scorer
from emq.scoring import ScoreContext, config_scores, configuration_scores
from primitives.inputs import InputSettings, compute_inputs

BITS = (2, 3, 4, 8)
FISHER = canonical(from_string("revert(sq_norm(Dz))"))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch():
    return calibration_batch(32, seed=0)


@pytest.fixture(scope="module")
def resnet_inputs(resnet20_trained, batch):
    """The shipped ResNet-20's ``Wq`` and ``Dz`` on 32 training images."""
    x, y = batch
    settings = InputSettings(candidates=BITS, names=("Wq", "Dz"))
    return compute_inputs(resnet20_trained, x, y, settings)


def every_config(layers: int, bits: int = len(BITS)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(bits)] * layers, indexing="ij")
    return np.stack([g.ravel() for g in grids], 1)


def test_joint_scores_add_the_layers_terms_before_the_norm(resnet_inputs):
    """-|sum_l Dz_l[b_l]|^2 per configuration, in numpy; the table is its diagonal, and the
    two differ by exactly the cross-layer products."""
    rng = np.random.default_rng(0)
    configs = rng.integers(0, len(BITS), size=(50, resnet_inputs.num_layers))
    configs[0] = 3  # W8 everywhere
    dz = [t["Dz"].double().numpy() for t in resnet_inputs.tensors]
    got = joint_scores(FISHER, resnet_inputs, configs)
    total = sum(dz[layer][configs[:, layer]] for layer in range(len(dz)))
    np.testing.assert_allclose(got, -(total**2).sum((1, 2)), rtol=1e-12)
    diagonal = config_scores(score_table(FISHER, resnet_inputs), configs)
    cross = sum(
        (dz[a][configs[:, a]] * dz[b][configs[:, b]]).sum((1, 2))
        for a in range(len(dz))
        for b in range(a + 1, len(dz))
    )
    np.testing.assert_allclose(got, diagonal - 2 * cross, rtol=1e-9)
    assert not np.allclose(got, diagonal, rtol=1e-3)  # the cross terms are not negligible
    # a cross-layer weight a: the diagonal and a times the cross terms (0: the table)
    for a in (0.0, 0.75):
        shrunk = joint_scores(FISHER, resnet_inputs, configs, a)
        np.testing.assert_allclose(shrunk, diagonal - 2 * a * cross, rtol=1e-9)
    assert np.array_equal(joint_scores(FISHER, resnet_inputs, configs, 1.0), got)
    with pytest.raises(ValueError, match=r"cross-layer weight must be in \[0, 1\]"):
        joint_scores(FISHER, resnet_inputs, configs, 1.5)


def test_the_joint_form_is_the_configurations_second_order_output_kl(
    resnet20_trained, resnet_inputs, batch
):
    """Quantize *every* layer's weights at 8 bits at once and measure the logit change: its
    true-Fisher term dz^T (diag p - p p^T) dz (twice the output KL, to second order) is what
    the joint form predicts, to 5 %; the per-layer sum misses the layers' interactions."""
    x, _ = batch
    folded = fold_bn(copy.deepcopy(resnet20_trained).double(), x[:2].double())
    quantized = copy.deepcopy(folded)
    w8 = BITS.index(8)
    with torch.no_grad():
        for (_, layer), t in zip(quantizable_layers(quantized), resnet_inputs.tensors, strict=True):
            layer.weight.copy_(t["Wq"][w8].double())
        z = folded(x.double())
        dz = quantized(x.double()) - z
    p = torch.softmax(z, 1)
    measured = float(((dz**2 * p).sum(1) - (dz * p).sum(1) ** 2).sum())
    kl = float((p * (torch.log_softmax(z, 1) - torch.log_softmax(z + dz, 1))).sum())
    config = np.full((1, resnet_inputs.num_layers), w8)
    joint = -joint_scores(FISHER, resnet_inputs, config)[0]
    per_layer = -config_scores(score_table(FISHER, resnet_inputs), config)[0]
    assert abs(joint - measured) < 0.05 * measured, (joint, measured)
    assert abs(joint - 2 * kl) < 0.05 * 2 * kl, (joint, 2 * kl)
    assert abs(per_layer - measured) > 0.3 * measured, (per_layer, measured)


def test_chunks_average_the_joint_scores(resnet20_trained, batch):
    """``configuration_scores`` asks a joint scorer chunk by chunk and averages, as tables
    are averaged; a table scorer's configurations are its averaged table's sums."""
    x, y = batch[0][:16], batch[1][:16]
    settings = InputSettings(candidates=BITS, names=("Dz",))
    whole = ScoreContext(resnet20_trained, x, y, settings, cache=False, chunk=8)
    halves = [ScoreContext(resnet20_trained, x[s], y[s], settings, cache=False)
              for s in (slice(0, 8), slice(8, 16))]  # fmt: skip
    configs = np.random.default_rng(1).integers(0, len(BITS), size=(20, 20))
    joint = ProxyScorer("fisher", FISHER, combine="joint")
    expected = np.mean([joint.configs(h, configs) for h in halves], axis=0)
    np.testing.assert_allclose(configuration_scores(joint, whole, configs), expected, rtol=1e-12)
    table = ProxyScorer("fisher", FISHER)
    expected = config_scores(np.mean([table(h) for h in halves], axis=0), configs)
    np.testing.assert_allclose(configuration_scores(table, whole, configs), expected, rtol=1e-12)


def test_the_default_proxy_is_joint_and_its_table_is_the_diagonal():
    scorer = resolve_scorer("default")
    assert scorer.joint and scorer.combine == "joint" and scorer.expr == FISHER
    doc = json.loads(DEFAULT_PROXY.read_text())
    table = load_proxy_document({**doc, "combine": "table"})
    assert not table.joint and table.expr == scorer.expr
    assert not load_proxy_document({k: v for k, v in doc.items() if k != "combine"}).joint


@pytest.mark.parametrize(
    "genome, combine, message",
    [
        ("sq_norm(Dz)", "joint", "revert(sq_norm(X))"),
        ("revert(frobenius_norm(Dz))", "joint", "revert(sq_norm(X))"),
        ("revert(sq_norm(Dz))", "sideways", "combine"),
    ],
)
def test_a_proxy_that_cannot_combine_jointly_is_refused_at_load(genome, combine, message):
    names = prefix_names(canonical(from_string(genome)))
    doc = {"format": "emq-proxy", "format_version": 1, "genome": names, "combine": combine}
    with pytest.raises(ValueError, match=re.escape(message)):
        load_proxy_document(doc, "proxy file p.json")


def test_terms_of_different_shapes_cannot_be_added(resnet_inputs):
    """``W`` differs in shape between layers: a clear error naming both shapes."""
    weights = canonical(from_string("revert(sq_norm(Wq))"))
    with pytest.raises(ValueError, match=r"has shape \[.*\] in layer 0 and \[.*\] in layer"):
        joint_scores(weights, resnet_inputs, np.zeros((1, resnet_inputs.num_layers), int))


def test_the_exported_default_proxy_scores_jointly_like_the_engine(tmp_path, resnet_inputs, capsys):
    """``emq export default --out DIR``: the shipped default proxy as a standalone module
    whose ``joint_scores`` equals the engine's, and a JSON that loads as the same proxy."""
    assert main(["export", "default", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    spec = importlib.util.spec_from_file_location("joint_export", tmp_path / "out/true_fisher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.METADATA["combine"] == "joint" and module.CROSS == DEFAULT_CROSS == 0.75
    configs = np.random.default_rng(2).integers(0, len(BITS), size=(30, 20))
    np.testing.assert_allclose(
        module.joint_scores(resnet_inputs.tensors, configs),
        joint_scores(FISHER, resnet_inputs, configs, DEFAULT_CROSS),
        rtol=1e-12,
    )
    table = module.score_table(resnet_inputs.tensors, len(BITS))
    np.testing.assert_array_equal(table, score_table(FISHER, resnet_inputs))
    exported = resolve_scorer(str(tmp_path / "out/true_fisher.json"))
    assert exported == resolve_scorer("default")
    # a table proxy's module has no joint function
    paths = export_proxy(FISHER, tmp_path / "table", "table")
    assert "def joint_scores" not in paths["py"].read_text()


def test_exporting_a_proxy_file_needs_an_output_folder(capsys):
    refused(["export", "default"], capsys, "needs --out")


def test_score_combine_on_a_baseline_is_one_clear_line(capsys):
    refused(["score", "--model", "vgg", "--proxy", "hawq_v3", "--combine", "joint",
             "--configs", ",".join(["8"] * 8)], capsys, "hawq_v3", "per layer")  # fmt: skip


def test_score_cross_on_a_scorer_that_is_not_joint_is_one_clear_line(capsys):
    refused(["score", "--model", "vgg", "--proxy", "hawq_v3", "--cross", "0.5",
             "--configs", ",".join(["8"] * 8)], capsys, "--cross 0.5", "jointly")  # fmt: skip
    refused(["score", "--model", "vgg", "--cross", "1.5", "--configs", ",".join(["8"] * 8)],
            capsys, "--cross", "[0, 1]")  # fmt: skip


def test_a_proxy_files_cross_weight_is_read_and_checked():
    """``cross`` in a proxy file: the shipped default's 0.75; absent, 1 (files written before
    the field); outside [0, 1], one clear error naming the field."""
    assert resolve_scorer("default").cross == DEFAULT_CROSS
    doc = {"format": "emq-proxy", "format_version": 1, "genome": prefix_names(FISHER),
           "combine": "joint"}  # fmt: skip
    assert load_proxy_document(doc).cross == 1.0
    assert load_proxy_document({**doc, "cross": 0.25}).cross == 0.25
    with pytest.raises(ValueError, match="cross"):
        load_proxy_document({**doc, "cross": 2})


def test_combine_can_be_switched_on_a_proxy():
    joint = replace(resolve_scorer("default"), combine="table")
    assert not joint.joint
    with pytest.raises(ValueError, match="combine must be one of"):
        replace(joint, combine="sum")


def test_the_gram_gives_the_joint_scores_and_the_table_on_its_diagonal(resnet_inputs):
    gram = joint_gram(FISHER, resnet_inputs)
    layers, bits = resnet_inputs.num_layers, len(BITS)
    assert gram.shape == (layers, bits, layers, bits)
    configs = np.random.default_rng(3).integers(0, bits, size=(40, layers))
    for cross in (1.0, 0.75, 0.0):
        np.testing.assert_allclose(
            gram_scores(gram, configs, cross),
            joint_scores(FISHER, resnet_inputs, configs, cross),
            rtol=1e-9,
        )
    diagonal = -np.einsum("lblb->lb", gram)
    np.testing.assert_allclose(diagonal, score_table(FISHER, resnet_inputs), rtol=1e-12)


def test_a_joint_proxys_verification_ranks_a_larger_pool_by_its_gram(tmp_path, monkeypatch):
    """Phase 1 of the default proxy keeps the joint Gram beside the table (and in the cache);
    the verification draws JOINT_POOL x K ILP solutions and front points and measures the K
    the joint combination ranks best after the answer."""
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "inputs"))  # the proxy inputs' cache

    def problem():
        return AllocationProblem.for_model("tiny", tiny_net(), cache=tmp_path,
                                           validation_images=100, scorer_images=32)  # fmt: skip

    p = problem()
    table = p.sensitivity("default")
    assert table.gram is not None and table.gram.shape == (3, 4, 3, 4)
    cached = problem().sensitivity("default")
    assert cached.from_cache and np.array_equal(cached.gram, table.gram)
    for g, values in enumerate(table.values):  # the table is the Gram's diagonal
        diagonal = -table.gram[g, :, g, :].diagonal()[list(table.columns[g])]  # its candidates
        np.testing.assert_allclose(values, diagonal[0] - diagonal, rtol=1e-9, atol=1e-12)
    budget = Budget(0.5, None)
    answer = allocate_ilp(table, p.macs, 0.5).choice
    pool = p.verification_pool(answer, table, budget, 3)
    sources = [c.source for c in pool]
    mixed = [c for c in pool if c.source.startswith("joint #")]
    assert sources[0] == "answer" and sources[1 : 1 + len(mixed)] == [c.source for c in mixed]
    assert mixed and all(s.startswith("uniform") for s in sources[1 + len(mixed) :])
    scores = table.joint_scores([c.choice for c in mixed])
    assert np.all(np.diff(scores) <= 1e-12 * np.abs(scores).max())  # best first
    drawn = allocate_ilp(table, p.macs, 0.5, solutions=3 * 3)
    assert {c.choice for c in mixed} <= {drawn.choice, *drawn.alternatives} | {
        pt.choice for pt in greedy_front(table, p.macs)
    }
    # the table's scorer draws only K and alternates, as before
    plain = p.verification_pool(answer, p.sensitivity("hawq_v3"), budget, 3)
    assert not any(c.source.startswith("joint") for c in plain)
    # a measured configuration scorer allocates with its (single-layer) table, no Gram
    measured = p.sensitivity("kl_measured")
    assert measured.gram is None and measured.evaluations == 3 * 4
    assert not any(c.source.startswith("joint") for c in p.verification_pool(
        allocate_ilp(measured, p.macs, 0.5).choice, measured, budget, 3))  # fmt: skip


def test_emq_score_combines_jointly_by_default_and_per_layer_on_request(
    capsys, tmp_path, monkeypatch
):
    """The default proxy's ``emq score``: joint scores (the label says so); ``--combine
    table`` gives the table's sums, which differ by the cross-layer products."""
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path))
    configs = ";".join(",".join([b] * 8) for b in ("8", "4", "2")) + ";2,3,4,8,8,4,3,2"
    runs = {}
    for combine in (None, "table"):
        extra = ["--combine", combine] if combine else []
        argv = ["score", "--model", "vgg", "--batch", "16", "--configs", configs, "--json"]
        assert main(argv + extra) == 0
        out = json.loads(capsys.readouterr().out)
        runs[out["combine"]] = np.array([r["score"] for r in out["scores"]])
    assert set(runs) == {"joint", "table"}
    for scores in runs.values():
        assert scores[0] > scores[1] > scores[2]  # more bits, less output damage
    assert np.all(runs["joint"] != runs["table"])
    assert np.isclose(runs["joint"][0], runs["table"][0], rtol=0.9)  # the same term's scale


def test_kl_measured_runs_each_whole_configuration(batch):
    """``kl_measured`` scores a configuration by the output KL with all its layers quantized
    at once (the bench's quantizer, activations in float): checked against the folded net
    with every layer's ``Wq`` swapped in; ``--combine table`` falls back to its table."""
    from emq.commands.score import with_combine

    model = tiny_net()
    x, y = batch[0][:32], batch[1][:32]
    ctx = ScoreContext(model, x, y, InputSettings(candidates=BITS, names=("Wq",)), cache=False)
    scorer = resolve_scorer("kl_measured")
    assert scorer.measured and scorer.joint and scorer.combine == "joint"
    configs = np.array([[3, 3, 3], [0, 0, 0], [3, 0, 3], [1, 2, 3], [2, 2, 2]])
    got = configuration_scores(scorer, ctx, configs)
    folded = fold_bn(copy.deepcopy(model), x[:2])
    layers = [layer for _, layer in quantizable_layers(folded)]
    with torch.no_grad():
        logp = torch.log_softmax(folded(x).double(), 1)
        for row, config in enumerate(configs):
            for layer, t, b in zip(layers, ctx.inputs.tensors, config, strict=True):
                layer.weight.copy_(t["Wq"][b])
            logq = torch.log_softmax(folded(x).double(), 1)
            kl = float((logp.exp() * (logp - logq)).sum())
            assert got[row] == pytest.approx(-kl, rel=1e-3, abs=1e-9)
    assert got[0] > got[4] > got[1]  # W8 everywhere closest to float, W2 farthest
    table = with_combine(scorer, "table")
    assert not table.joint and table.name == "kl_measured"
    assert configuration_scores(table, ctx, configs).shape == (5,)
