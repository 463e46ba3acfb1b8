"""The study scripts' own arithmetic (``emq.perf``): what they print rests on it."""

import numpy as np

from emq.perf.layer_interactions import FORMS, form_scores


def test_layer_interaction_forms_follow_their_definitions():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(3, 4, 5))  # [L, B, n]
    bit_index = rng.integers(0, 4, size=(6, 3))
    got = form_scores(c, bit_index)
    assert tuple(got) == FORMS
    for i, bits in enumerate(bit_index):
        per = np.stack([c[layer, b] for layer, b in enumerate(bits)])  # [L, n]
        assert np.isclose(got["per-layer"][i], -(per**2).sum())
        assert np.isclose(got["joint"][i], -(per.sum(0) ** 2).sum())
        assert np.isclose(got["abs per-layer"][i], -np.abs(per).sum())
        assert np.isclose(got["abs joint"][i], -np.abs(per.sum(0)).sum())
    # one layer: nothing to interact with, so the joint forms are the per-layer ones
    one = form_scores(c[:1], bit_index[:, :1])
    assert np.allclose(one["joint"], one["per-layer"])
    assert np.allclose(one["abs joint"], one["abs per-layer"])
    # several layers: the cross-layer terms change the scores
    assert not np.allclose(got["joint"], got["per-layer"])
