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


def test_fisher_forms_follow_their_definitions():
    from emq.perf.fisher_forms import FORMS as FISHER_FORMS
    from emq.perf.fisher_forms import form_tables

    rng = np.random.default_rng(1)
    dz = rng.normal(size=(3, 4, 5, 10))  # [L, B, n, C]
    p = rng.dirichlet(np.ones(10), size=5)  # [n, C]
    y = rng.integers(0, 10, size=5)
    got = form_tables(dz, p, y, seed=0)
    assert tuple(got) == FISHER_FORMS and all(t.shape == (3, 4) for t in got.values())
    for layer in range(3):
        for b in range(4):
            grad = p - np.eye(10)[y]  # d(cross-entropy)/d(logits), per image
            first = (dz[layer, b] * grad).sum(1)
            fisher = np.stack([np.diag(q) - np.outer(q, q) for q in p])  # [n, C, C]
            ggn = np.einsum("nk,nkj,nj->n", dz[layer, b], fisher, dz[layer, b])
            assert np.isclose(got["empirical"][layer, b], -(first**2).sum())
            assert np.isclose(got["ggn"][layer, b], -ggn.sum())
            assert np.isclose(got["logit"][layer, b], -(dz[layer, b] ** 2).sum())
            assert np.isclose(got["taylor"][layer, b], -(first + ggn / 2).sum())
    # the sampled labels are drawn by the seed: the same seed, the same table
    assert np.array_equal(form_tables(dz, p, y, seed=0)["sampled"], got["sampled"])
    # labels drawn from a one-hot softmax are that class: the sampled form is the empirical
    sure = np.eye(10)[y]
    assert np.allclose(
        form_tables(dz, sure, y, 3)["sampled"], form_tables(dz, sure, y, 3)["empirical"]
    )


def test_fisher_joint_forms_follow_their_definitions():
    import torch

    from emq.perf.fisher_joint import FORMS as JOINT_FORMS
    from emq.perf.fisher_joint import joint_scores
    from primitives.inputs import _fisher_whitened

    rng = np.random.default_rng(2)
    dz = rng.normal(size=(3, 4, 5, 10))  # [L, B, n, C]
    p = rng.dirichlet(np.ones(10), size=5)  # [n, C]
    bit_index = rng.integers(0, 4, size=(6, 3))
    got = joint_scores(dz, p, bit_index)
    assert tuple(got) == JOINT_FORMS
    fisher = np.stack([np.diag(q) - np.outer(q, q) for q in p])  # [n, C, C]
    # the per-layer form is the default proxy's: sum of |Dz|^2 over layers and images
    dz_input = _fisher_whitened(torch.from_numpy(dz), torch.from_numpy(p)).double().numpy()
    for i, bits in enumerate(bit_index):
        per = np.stack([dz[layer, b] for layer, b in enumerate(bits)])  # [L, n, C]
        total = per.sum(0)
        per_layer = sum(np.einsum("nk,nkj,nj->", d, fisher, d) for d in per)
        assert np.isclose(got["per-layer"][i], -per_layer)
        whitened = sum((dz_input[layer, b] ** 2).sum() for layer, b in enumerate(bits))
        assert np.isclose(got["per-layer"][i], -whitened, rtol=1e-6)
        assert np.isclose(got["joint"][i], -np.einsum("nk,nkj,nj->", total, fisher, total))
    one = joint_scores(dz[:1], p, bit_index[:, :1])
    assert np.allclose(one["joint"], one["per-layer"])
    assert not np.allclose(got["joint"], got["per-layer"])
