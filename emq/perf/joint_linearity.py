"""Study: where the joint combination loses, is it the linearisation or the KL itself?

The default proxy's joint combination predicts a configuration's second-order output KL
from each layer's *linearised* logit change, added over layers (``emq.graph.joint_scores``).
It ranks better than the per-layer sum on the zoo and worse on three of the four unseen
examples (README "The joint combination"). Two explanations tell different design changes
apart: the linear sum may mispredict the whole configuration's logit change (then measuring
the change, not predicting it, would fix it), or the output KL may not be what orders these
models' accuracies (then no better estimate of it would help). Here every configuration of
a bench is also *run*: all its layers' weights quantized at once (``Wq``, the folded net in
float32 - float64 convolutions took seconds per configuration -, activations in float as for
``Dz``) on the same 512 calibration images, and ranked by

- ``per-layer`` / ``joint``: the default proxy's table sum and joint combination;
- ``measured Fisher``: the true-Fisher term of the measured logit change, ``sum_n dz^T (diag
  p - p p^T) dz`` (what ``joint`` predicts);
- ``measured KL``: the measured ``sum_n KL(p || q)`` (no second-order approximation).

Prints S@topk / S@100 % per form (``layer_interactions.study_main``); rows go to
``OUT/rows.jsonl`` as each (bench, batch seed) finishes. Asserts nothing.

    python -m emq.perf.joint_linearity [--models resnet20,...] [--seeds 0]
        [--examples examples/torch_vit,examples/convnext,examples/inception,examples/mixer,
                    examples/squeezenet]
        [--out /tmp/joint-linearity]
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from benchmark.bench import Bench
from benchmark.ptq import fold_bn
from benchmark.quantizers import quantizable_layers
from emq.baselines.measured import output_kl
from emq.perf.fisher_forms import batch_changes, true_fisher
from emq.perf.fisher_joint import joint_scores
from emq.perf.layer_interactions import study_main
from emq.score import model_context

FORMS = ("per-layer", "joint", "measured Fisher", "measured KL")


def measured_changes(model: torch.nn.Module, bench: Bench, seed: int) -> tuple[np.ndarray, ...]:
    """Per configuration of the bench, the measured ``sum_n dz^T F_n dz`` and ``sum_n KL``
    with every layer's weights quantized at once (float32 forward passes, sums in float64;
    512 images of ``seed``)."""
    ctx = model_context(model, bench.candidates, seed=seed, cache=False, names=("Wq",),
                        rounding=bench.rounding, adaround=bench.adaround)  # fmt: skip
    x = ctx.x.float()
    folded = fold_bn(copy.deepcopy(model).float(), x[:2])
    layers = [layer for _, layer in quantizable_layers(folded)]
    weights = [t["Wq"].float() for t in ctx.inputs.tensors]
    fp = [layer.weight.detach().clone() for layer in layers]
    with torch.no_grad():
        z = folded(x).double()
        p = torch.softmax(z, 1).numpy()
        fisher, kl = [], []
        for row in bench.bit_index():
            for layer, w, b in zip(layers, weights, row, strict=True):
                layer.weight.copy_(w[b])
            zq = folded(x).double()
            fisher.append(float(true_fisher((zq - z).numpy(), p).sum()))
            kl.append(output_kl(z, zq))
        for layer, w in zip(layers, fp, strict=True):
            layer.weight.copy_(w)
    return np.array(fisher), np.array(kl)


def form_scores(model: torch.nn.Module, bench: Bench, seed: int) -> dict[str, np.ndarray]:
    dz, p, _ = batch_changes(model, bench, seed)
    predicted = joint_scores(dz, p, bench.bit_index())
    fisher, kl = measured_changes(model, bench, seed)
    return {**predicted, "measured Fisher": -fisher, "measured KL": -kl}


if __name__ == "__main__":
    study_main(__doc__, FORMS, form_scores, "/tmp/joint-linearity")
