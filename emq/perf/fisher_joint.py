"""Study: the true Fisher with the layers' interactions, against the per-layer default proxy.

The default proxy's table, ``revert(sq_norm(Dz))``, scores a configuration by
``-sum_l sum_n dz_l^T F_n dz_l`` with ``dz_l = dz[l, b_l, n]`` image n's linearised logit
change when only layer l is quantized at its bit-width and ``F_n = diag p - p p^T`` (the
true Fisher, the output KL to second order). It is a score table, so it ignores how the
layers' changes combine. The *joint* form adds them first, ``-sum_n dz^T F_n dz`` with
``dz = sum_l dz_l``: the second-order KL of the whole configuration (still linearised in
each layer's change), cross-layer terms included; no score table can express it, so the
ILP cannot optimise it. This study chose it for ``emq score``: the default proxy's
``combine`` is ``joint`` (``emq.graph.joint_scores``, README "The joint combination").
``python -m emq.perf.layer_interactions`` asked the same of the empirical Fisher (there
the joint form won on the zoo and lost on the first two unseen examples).

Prints Spearman@topk / @100 % on every configuration of each bench for ``per-layer`` and
``joint``, 512 images read 128 at a time (``fisher_forms.batch_changes``). Rows go to
``OUT/rows.jsonl`` as each (bench, batch seed) finishes (a rerun skips them). Asserts
nothing.

    python -m emq.perf.fisher_joint [--models resnet20,...] [--seeds 0,1]
        [--examples examples/torch_vit,examples/convnext,examples/inception,examples/mixer,
                    examples/squeezenet]
        [--out /tmp/fisher-joint]

An example ``examples/NAME`` is its bench ``NAME.sqlite``, checkpoint ``NAME.pt`` and factory
``NAME:make`` (run with ``examples`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.bench import Bench
from emq.perf.fisher_forms import batch_changes, true_fisher
from emq.perf.layer_interactions import study_main

FORMS = ("per-layer", "joint")


def joint_scores(dz: np.ndarray, p: np.ndarray, bit_index: np.ndarray) -> dict[str, np.ndarray]:
    """Both forms' scores of every configuration ``bit_index [N, L]`` from ``dz [L, B, n, C]``
    and the softmax ``p [n, C]``."""
    layers = np.arange(dz.shape[0])
    per_layer = -true_fisher(dz, p).sum(-1)  # [L, B]: the default proxy's table
    total = np.zeros((len(bit_index), *dz.shape[2:]))  # [N, n, C]
    for layer in layers:
        total += dz[layer, bit_index[:, layer]]
    return {
        "per-layer": per_layer[layers[None, :], bit_index].sum(1),
        "joint": -true_fisher(total, p).sum(-1),
    }


def form_scores(model: torch.nn.Module, bench: Bench, seed: int) -> dict[str, np.ndarray]:
    dz, p, _ = batch_changes(model, bench, seed)
    return joint_scores(dz, p, bench.bit_index())


if __name__ == "__main__":
    study_main(__doc__, FORMS, form_scores, "/tmp/fisher-joint")
