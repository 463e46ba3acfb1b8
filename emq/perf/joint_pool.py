"""Study: would the joint combination pick better allocations than the table the ILP optimises?

``emq allocate`` optimises the default proxy's table (the per-layer true Fisher); ``emq
score`` ranks configurations with its joint form (the layers' interactions included; README
"The joint combination"). The allocators need a table, but the verification could rank a
larger pool of near-optimal allocations with the joint form before measuring a few. Whether
that would help is asked here, on the test set:

for each zoo model and relative-BOPs budget, the pool is the ILP's ``--solutions`` best
solutions of the default proxy's table (no-good cuts) and the greedy front's points at and
after the budget (as many), duplicates dropped; every pool member is measured (PTQ top-1 on
the 10,000 test images, as ``emq allocate --compare`` judges allocations) and scored both
ways (512 calibration images, 128 at a time, as ``emq allocate``'s phase 1). Printed per
cell: the accuracy of the table's pick (the ILP answer), of the joint form's pick, of the
best of the joint form's top 4 and of the table's top 4, of the best of the answer and the
joint form's 3 best others (what ``emq allocate --verify 4`` races besides the uniform
configurations), the pool's best, and each form's Spearman with the measured accuracy over
the pool. Rows go to ``OUT/rows.jsonl`` as each cell finishes (a rerun skips them). Asserts
nothing.

    python -m emq.perf.joint_pool [--models resnet20,...] [--budgets 0.25,0.35,0.5]
        [--solutions 12] [--out /tmp/joint-pool]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from benchmark.models import MODELS, load_model
from emq.allocate.budget import Budget
from emq.allocate.groups import layer_bits
from emq.allocate.problem import AllocationProblem

TOP = 4  # candidates a default verification measures besides the uniform ones


def pool_choices(problem: AllocationProblem, table, budget: float, solutions: int) -> list:
    """The ILP's best ``solutions`` and as many front points from the budget on, unique."""
    ilp, front = problem.near_optimal(table, Budget(budget, None), solutions)
    return list(dict.fromkeys(tuple(c) for c in (*ilp, *front)))


def model_cells(name: str, budgets: list[float], solutions: int) -> list[dict]:
    """Every budget's row for one model: the pools scored by the default proxy's table and
    its joint Gram (both from ``emq allocate``'s phase 1), then measured."""
    model = load_model(name)
    problem = AllocationProblem.for_model(name, model)
    table = problem.sensitivity("default")  # the ILP's objective and the joint Gram
    n = len(problem.layer_names)
    rows = []
    for budget in budgets:
        start = time.perf_counter()
        pool = pool_choices(problem, table, budget, solutions)
        joint = table.joint_scores(pool)
        # the table's score of a choice: minus its summed sensitivities (the ILP's objective)
        per_layer = -np.array([sum(table.values[g][k] for g, k in enumerate(c)) for c in pool])
        acc = np.array([problem.accuracy(*layer_bits(problem.groups, c, n), "test") for c in pool])
        by_joint = np.argsort(-joint, kind="stable")
        by_table = np.argsort(-per_layer, kind="stable")
        rows.append({
            "model": name, "budget": budget, "pool": len(pool), "ilp": float(acc[0]),
            "joint_pick": float(acc[by_joint[0]]),
            "table_top4_best": float(acc[by_table[:TOP]].max()),
            "joint_top4_best": float(acc[by_joint[:TOP]].max()),
            # what the verification races: the answer and the joint form's best others
            "answer_joint_best": float(acc[[0, *[i for i in by_joint if i][: TOP - 1]]].max()),
            "pool_best": float(acc.max()),
            "spearman_table": float(spearmanr(per_layer, acc).statistic),
            "spearman_joint": float(spearmanr(joint, acc).statistic),
            "seconds": round(time.perf_counter() - start, 1),
            "acc": acc.tolist(), "joint": joint.tolist(), "per_layer": per_layer.tolist(),
        })  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--budgets", default="0.25,0.35,0.5")
    p.add_argument("--solutions", type=int, default=12)
    p.add_argument("--out", default="/tmp/joint-pool")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["model"], row["budget"])] = row
    budgets = [float(b) for b in args.budgets.split(",")]
    for name in args.models.split(","):
        if all((name, b) in done for b in budgets):
            continue
        budgets_left = [b for b in budgets if (name, b) not in done]
        for row in model_cells(name, budgets_left, args.solutions):
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[(name, row["budget"])] = row
            print(json.dumps(row), flush=True)
    keys = ("ilp", "joint_pick", "table_top4_best", "joint_top4_best", "answer_joint_best",
            "pool_best")  # fmt: skip
    print(f"{'model':<14}{'budget':>7}{'pool':>5}" + "".join(f"{k:>19}" for k in keys)
          + f"{'rho table':>10}{'rho joint':>10}")  # fmt: skip
    for (name, budget), row in sorted(done.items()):
        cells = "".join(f"{row.get(k, float('nan')):>19.2f}" for k in keys)
        print(f"{name:<14}{budget:>7}{row['pool']:>5}{cells}"
              f"{row['spearman_table']:>10.2f}{row['spearman_joint']:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
