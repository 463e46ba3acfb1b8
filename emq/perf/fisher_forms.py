"""Study: which Fisher form of the output-space loss change ranks configurations best.

The default proxy, ``revert(sq_norm(sample_sum(mul(D, Ga))))``, is the *empirical* Fisher:
``sum_n (g_n . D_n)^2`` with ``g_n`` the gradient of image n's loss at its *true* label. On
a well-trained net most images are classified with confidence, their gradients are near
zero, and the sum is carried by the few images the net gets wrong or nearly wrong. Every
form here is a function of the linearised logit change ``dz[l, b, n, k] = J_k(n) . D`` (the
logit k of image n when only layer l is quantized at bit b, to first order; ten backward
passes of the logits, one per class) and of the softmax ``p[n]``:

- ``empirical``: ``sum_n ((p - e_y) . dz)^2`` (the default proxy's ranking);
- ``ggn``: ``sum_n dz^T (diag p - p p^T) dz`` (the true Fisher / Gauss-Newton term: the
  second-order KL between the float and quantized outputs; no labels);
- ``sampled``: the empirical form with each image's label drawn from ``p`` (one draw;
  what a label-free gradient input would give);
- ``logit``: ``sum_n |dz|^2`` (the linearised output distortion, no softmax);
- ``taylor``: ``sum_n ((p - e_y) . dz + ggn_n / 2)`` (the signed second-order loss change);

each scored as ``-sum_l S[l, b_l]`` (a score table). 512 images read 128 at a time. Rows go
to ``OUT/rows.jsonl`` as each (bench, batch seed) finishes (a rerun skips them). Asserts
nothing.

    python -m emq.perf.fisher_forms [--models resnet20,...] [--seeds 0,1]
        [--examples examples/torch_vit,examples/convnext,examples/inception,examples/mixer,
                    examples/squeezenet]
        [--out /tmp/fisher-forms]

An example ``examples/NAME`` is its bench ``NAME.sqlite``, checkpoint ``NAME.pt`` and factory
``NAME:make`` (run with ``examples`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from benchmark.bench import Bench
from benchmark.ptq import fold_bn
from emq.perf.layer_interactions import study_main
from emq.score import model_context
from emq.scoring import config_scores
from primitives.inputs import logit_changes, reuse_quantized_weights

FORMS = ("empirical", "ggn", "sampled", "logit", "taylor")


def true_fisher(dz: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``dz^T (diag p - p p^T) dz`` over the last (class) axis; ``p [n, C]`` broadcasts
    against ``dz [..., n, C]``."""
    return (dz**2 * p).sum(-1) - (dz * p).sum(-1) ** 2


def _part_changes(model: torch.nn.Module, part) -> tuple[np.ndarray, np.ndarray]:
    """``dz [L, B, n, C]`` and the softmax ``[n, C]`` of one calibration chunk (as the input
    ``Dz`` computes them, before its whitening)."""
    x = part.x.double()
    folded = fold_bn(copy.deepcopy(model).double(), x[:2])
    for prm in folded.parameters():
        prm.requires_grad_(False)
    dz, p = logit_changes(folded, x, [t["D"] for t in part.inputs.tensors])
    return torch.stack(dz).numpy(), p.numpy()


def batch_changes(model: torch.nn.Module, bench: Bench, seed: int) -> tuple[np.ndarray, ...]:
    """``dz [L, B, n, C]``, softmax ``p [n, C]`` and labels ``y [n]`` (float64)."""
    ctx = model_context(model, bench.candidates, seed=seed, cache=False, names=("D",),
                        rounding=bench.rounding, adaround=bench.adaround)  # fmt: skip
    dzs, ps, ys = [], [], []
    with reuse_quantized_weights():
        for part in ctx.chunks():
            dz, p = _part_changes(model, part)
            dzs.append(dz)
            ps.append(p)
            ys.append(part.y.numpy())
            part.drop_inputs()
    return np.concatenate(dzs, axis=2), np.concatenate(ps), np.concatenate(ys)


def form_tables(dz: np.ndarray, p: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Each form's score table ``S[L, B]`` (higher = expected more accurate)."""
    onehot = np.eye(p.shape[1])[y]
    rng = np.random.default_rng(seed)
    drawn = np.eye(p.shape[1])[[rng.choice(p.shape[1], p=row / row.sum()) for row in p]]
    first = (dz * (p - onehot)).sum(-1)  # [L, B, n]: image n's first-order loss change
    ggn = true_fisher(dz, p)
    return {
        "empirical": -(first**2).sum(-1),
        "ggn": -ggn.sum(-1),
        "sampled": -(((dz * (p - drawn)).sum(-1)) ** 2).sum(-1),
        "logit": -(dz**2).sum((-1, -2)),
        "taylor": -(first + ggn / 2).sum(-1),
    }


def form_scores(model: torch.nn.Module, bench: Bench, seed: int) -> dict[str, np.ndarray]:
    """Each form's scores of the bench's configurations."""
    found = form_tables(*batch_changes(model, bench, seed), seed)
    return {form: config_scores(table, bench.bit_index()) for form, table in found.items()}


if __name__ == "__main__":
    study_main(__doc__, FORMS, form_scores, "/tmp/fisher-forms")
