"""Score tables to configuration scores: per-bit reduction, the gather, bit-width lookup."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from emq.scoring import bits_to_index, config_scores, reduce_to_bits

B = 4


def test_reduce_per_bit_scalars_unchanged():
    out = torch.tensor([1.0, -2.0, 3.5, 0.25])
    assert torch.equal(reduce_to_bits(out, B), out)
    assert torch.equal(reduce_to_bits(out.reshape(B, 1, 1), B), out)


def test_reduce_single_value_broadcasts_to_every_bit():
    for out in (torch.tensor([2.5]), torch.tensor(2.5), torch.tensor([[2.5]])):
        red = reduce_to_bits(out, B)
        assert red.shape == (B,) and torch.equal(red, torch.full((B,), 2.5))


def test_reduce_takes_the_mean_over_non_bit_axes():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(B, 6, 8, 5, 5, generator=gen)
    expected = torch.stack([out[i].mean() for i in range(B)])
    torch.testing.assert_close(reduce_to_bits(out, B), expected)


def test_reduce_bit_independent_tensor_broadcasts_its_mean():
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(1, 8, 4, 3, 3, generator=gen)
    red = reduce_to_bits(out, B)
    assert red.shape == (B,)
    torch.testing.assert_close(red, out.mean().expand(B))


@pytest.mark.parametrize("shape", [(3,), (2,), (5, 7), (3, 8, 4, 3, 3), (B + 1,)])
def test_reduce_wrong_bit_count_raises(shape):
    with pytest.raises(ValueError, match=f"expected {B}"):
        reduce_to_bits(torch.ones(shape), B)


def test_reduce_does_not_modify_its_input():
    out = torch.arange(24.0).reshape(B, 6)
    before = out.clone()
    reduce_to_bits(out, B)
    assert torch.equal(out, before)


def test_config_scores_equals_a_double_loop():
    rng = np.random.default_rng(0)
    layers, n = 7, 50
    table = rng.normal(size=(layers, B))
    idx = rng.integers(0, B, size=(n, layers))
    expected = np.array([sum(table[j, idx[c, j]] for j in range(layers)) for c in range(n)])
    scores = config_scores(table, idx)
    assert scores.shape == (n,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    t32 = table.astype(np.float32)  # summed in float64 whatever the table's dtype
    exact32 = [sum(float(t32[j, idx[c, j]]) for j in range(layers)) for c in range(n)]
    np.testing.assert_allclose(config_scores(t32, idx), exact32, rtol=1e-12)


def test_config_scores_rejects_wrong_layer_count():
    table = np.zeros((3, B))
    with pytest.raises(ValueError, match="4 layers, score table has 3"):
        config_scores(table, np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="score table has 3"):
        config_scores(table, np.zeros(3, dtype=int))


def test_config_scores_rejects_out_of_range_index():
    with pytest.raises((IndexError, ValueError)):
        config_scores(np.zeros((2, B)), np.array([[0, B]]))


def test_bits_to_index_maps_bit_widths():
    cands = (2, 3, 4, 8)
    configs = np.array([[2, 8, 4], [3, 3, 2], [8, 8, 8]])
    idx = bits_to_index(configs, cands)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, [[0, 3, 2], [1, 1, 0], [3, 3, 3]])
    assert [[cands[i] for i in row] for row in idx] == configs.tolist()
    np.testing.assert_array_equal(bits_to_index([[8, 2]], (8, 2)), [[0, 1]])


@pytest.mark.parametrize("configs, bad", [([[2, 5, 4]], "[5]"), ([[16, 1], [2, 3]], "[1, 16]")])
def test_bits_to_index_rejects_unknown_bits(configs, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        bits_to_index(configs, (2, 3, 4, 8))


def test_bits_to_index_rejects_fractional_bits():
    # 4.5 is not a candidate bit-width; it must not be silently read as 4.
    with pytest.raises(ValueError, match="4.5"):
        bits_to_index(np.array([[4.5, 2.0]]), (2, 3, 4, 8))


def test_bits_to_index_and_config_scores_compose():
    table = np.array([[0.0, 1.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0]])
    idx = bits_to_index([[2, 8], [4, 3]], (2, 3, 4, 8))
    np.testing.assert_array_equal(config_scores(table, idx), [40.0, 22.0])


# ---------------------------------------------------------------- calibration chunks


@pytest.fixture(scope="module")
def vgg():
    from benchmark.models import load_model

    return load_model("vgg")


def _ctx(model, n: int, chunk: int, names: tuple[str, ...], seed: int = 0):
    from benchmark.data import calibration_batch
    from emq.scoring import ScoreContext
    from primitives.inputs import InputSettings

    x, y = calibration_batch(n, seed)
    settings = InputSettings(candidates=(2, 3, 4, 8), names=names)
    return ScoreContext(model, x, y, settings, False, chunk)


def test_a_larger_calibration_batch_starts_with_the_smaller_one():
    from benchmark.data import calibration_batch

    small, big = calibration_batch(16, 3), calibration_batch(64, 3)
    assert torch.equal(big[0][:16], small[0]) and torch.equal(big[1][:16], small[1])


def test_chunks_are_equal_parts_of_the_batch_and_not_cached(vgg):
    ctx = _ctx(vgg, 70, 32, ("W",))
    ctx.cache = None  # the default cache: chunks still do not write theirs
    parts = ctx.chunks()
    assert [len(p.x) for p in parts] == [24, 23, 23]
    assert all(p.cache is False and p.chunk == 32 for p in parts)
    assert torch.equal(torch.cat([p.x for p in parts]), ctx.x)
    assert torch.equal(torch.cat([p.y for p in parts]), ctx.y)
    one = _ctx(vgg, 32, 32, ("W",))
    assert one.chunks() == [one]
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        _ctx(vgg, 8, 0, ("W",))


def test_the_fisher_terms_over_chunks_rank_like_the_whole_batch(vgg):
    """Empirical Fisher: the loss is a mean over the batch, so a chunk of m of n images has
    gradients n/m times the whole batch's and the mean of the chunks' tables is (n/m) x the
    whole table. True Fisher (the default proxy): a sum of per-image terms that do not depend
    on the rest of the batch, so the mean of the chunks' tables is (m/n) x the whole table."""
    from emq.genome import from_string
    from emq.graph import canonical
    from emq.proxy import ProxyScorer
    from emq.scorers import resolve_scorer
    from emq.scoring import score_table, scorer_inputs
    from emq.seeds import EMPIRICAL_FISHER

    empirical = ProxyScorer("empirical", canonical(from_string(EMPIRICAL_FISHER)))
    for scorer, factor in ((empirical, 3.0), (resolve_scorer("default"), 1 / 3)):
        names = scorer_inputs(scorer)
        whole = score_table(scorer, _ctx(vgg, 24, 24, names))
        thirds = score_table(scorer, _ctx(vgg, 24, 8, names))
        np.testing.assert_allclose(thirds, factor * whole, rtol=1e-4)
        first = score_table(scorer, _ctx(vgg, 8, 8, names))
        assert not np.allclose(first, factor * whole)  # a chunk alone is another estimate


def test_measured_scorers_see_the_whole_batch_training_free_ones_each_chunk(vgg):
    from emq.scoring import score_table

    seen: list[int] = []

    class Spy:
        name, measured, inputs = "spy", True, ()

        def __call__(self, ctx):
            seen.append(len(ctx.x))
            return np.full((3, 4), float(len(ctx.x)))

    ctx = _ctx(vgg, 64, 16, ("W",))
    np.testing.assert_array_equal(score_table(Spy(), ctx), np.full((3, 4), 64.0))
    assert seen == [64]
    seen.clear()
    Spy.measured = False
    np.testing.assert_array_equal(score_table(Spy(), ctx), np.full((3, 4), 16.0))
    assert seen == [16, 16, 16, 16]


def test_chunks_quantize_the_weights_once_and_give_the_same_inputs(vgg, monkeypatch):
    """Q_b(W) does not depend on the batch: score_table's chunks reuse the first chunk's
    (one quantization per layer and bit in all), bit for bit the inputs computed apart."""
    import benchmark.quantizers as quantizers
    import primitives.inputs as inputs_mod
    from emq.scoring import score_table

    names = ("Wq", "E", "D")
    ctx = _ctx(vgg, 24, 8, names)
    layers, bits = len(ctx.chunks()[0].inputs.tensors), len(ctx.candidates)
    fresh = [p.inputs.tensors for p in ctx.chunks()]  # each chunk computed on its own
    calls: list[int] = []
    real = quantizers.quantize_weight

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(quantizers, "quantize_weight", counting)
    seen: list[list[dict]] = []

    def scorer(part):
        seen.append(part.inputs.tensors)
        return np.zeros((layers, bits))

    score_table(scorer, ctx)
    assert len(calls) == layers * bits  # not once per chunk (3x)
    assert inputs_mod._QUANTIZED is None  # nothing kept after the scoring
    assert len(seen) == len(fresh) == 3
    for got, want in zip(seen, fresh, strict=True):
        for g, w in zip(got, want, strict=True):
            for name in names:
                assert torch.equal(g[name], w[name]), name
    calls.clear()
    score_table(scorer, ctx)  # outside a scoring, quantized again
    assert len(calls) == layers * bits
