"""Study: how much of the joint form's cross-layer terms to trust.

The default proxy ranks a configuration by the joint form ``-sum_n dz^T F_n dz`` with
``dz = sum_l dz_l`` (``emq.perf.fisher_joint``); the per-layer form keeps only the diagonal
``l = m`` of that double sum. The joint form = diagonal + cross terms, and the cross terms
assume the layers' logit changes add linearly, which ``emq.perf.joint_linearity`` found is
where the joint form loses (the ConvNeXt). This asks whether a shrunk form,
``diagonal + a * cross terms`` (``a = 0``: per-layer, ``a = 1``: joint), ranks better on
architectures it was not chosen on: every ``a`` of the grid on every bench, then ``a``
chosen by leave-one-zoo-model-out (the mean S@topk on the other zoo models) and read on the
model left out, and ``a`` chosen on all zoo models read on the unseen examples.

Rows go to ``OUT/rows.jsonl`` as each (bench, batch seed) finishes (a rerun skips them).
Asserts nothing.

    python -m emq.perf.joint_shrink [--models resnet20,...] [--seeds 0,1]
        [--examples examples/torch_vit,...] [--out /tmp/joint-shrink]

(with ``examples`` on ``PYTHONPATH``)
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.bench import Bench
from emq.perf.fisher_forms import batch_changes
from emq.perf.fisher_joint import joint_scores
from emq.perf.layer_interactions import study_main

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
FORMS = tuple(f"a={a:g}" for a in GRID)


def shrunk_scores(model: torch.nn.Module, bench: Bench, seed: int) -> dict[str, np.ndarray]:
    dz, p, _ = batch_changes(model, bench, seed)
    both = joint_scores(dz, p, bench.bit_index())
    diag, joint = both["per-layer"], both["joint"]
    return {form: diag + a * (joint - diag) for form, a in zip(FORMS, GRID, strict=True)}


def leave_one_out(rows: list[dict]) -> None:
    """``a`` picked on the other zoo models' mean S@topk, read on the model left out; and
    picked on every zoo model, read on the examples."""
    means: dict[str, dict[str, float]] = {}
    for r in rows:
        cell = means.setdefault(r["model"], {f: 0.0 for f in FORMS})
        runs = sum(1 for s in rows if s["model"] == r["model"])
        for f in FORMS:
            cell[f] += r[f][0] / runs
    zoo = [m for m in means if not m.startswith("examples/")]
    print("\nleave one zoo model out: a picked on the others, S@topk on it (mean over seeds)")
    picked_rows = []
    for name in zoo:
        rest = [m for m in zoo if m != name]
        pick = max(FORMS, key=lambda f: np.mean([means[m][f] for m in rest]))
        picked_rows.append((means[name][pick], means[name]["a=0"], means[name]["a=1"]))
        print(
            f"{name:<20} {pick:<7} {means[name][pick]:6.1f}  "
            f"(per-layer {means[name]['a=0']:.1f}, joint {means[name]['a=1']:.1f})"
        )
    if picked_rows:
        got, per, joint = np.mean(picked_rows, axis=0)
        print(f"{'mean':<20} {'':<7} {got:6.1f}  (per-layer {per:.1f}, joint {joint:.1f})")
        pick = max(FORMS, key=lambda f: np.mean([means[m][f] for m in zoo]))
        print(f"\npicked on all {len(zoo)} zoo models: {pick}")
        examples = [m for m in means if m.startswith("examples/")]
        for name in examples:
            cells = "  ".join(f"{f} {means[name][f]:.1f}" for f in FORMS)
            print(f"{name:<20} {cells}")
        if examples:
            cells = "  ".join(f"{f} {np.mean([means[m][f] for m in examples]):.1f}" for f in FORMS)
            worst = "  ".join(f"{f} {min(means[m][f] for m in examples):.1f}" for f in FORMS)
            print(f"{'mean, examples':<20} {cells}\n{'worst, examples':<20} {worst}")


if __name__ == "__main__":
    leave_one_out(study_main(__doc__, FORMS, shrunk_scores, "/tmp/joint-shrink"))
