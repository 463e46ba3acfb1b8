"""Cost of the default campaign (every search-set bench): cold and warm, time and memory.

Runs ``emq evolve`` (the defaults: fitness over all the zoo's search-set benches, a report
on the held-out models) twice in a subprocess: first with an empty proxy-inputs cache
(``EMQ_CACHE``: every model's inputs computed), then again in a new run folder with that
cache filled. For each run it prints the wall-clock time, the peak memory of the whole
process tree (PSS and RSS, sampled every 0.5 s with psutil), the genome evaluations and their
rate. Asserts nothing.

    python -m emq.perf.campaign_cost [--steps 150] [--keep DIR] [-- extra evolve options]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from emq.perf.campaign_scale import run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150, help="campaign steps (default 150)")
    p.add_argument("--keep", type=Path, help="keep run folders and cache here (default: temp)")
    p.add_argument("extra", nargs="*", help="more emq evolve options, after --")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        env = {**os.environ, "EMQ_CACHE": str(root / "cache")}
        rows = []
        for label in ("cold (inputs computed)", "warm (inputs cached)"):
            run_dir = root / f"run-{len(rows)}"
            res = run(["--run", str(run_dir), "--steps", str(args.steps), *args.extra], env, [])
            rows.append((label, res))
            print(f"{label}: {res['wall']:.1f} s, peak PSS {res['peak_pss'] / 1e9:.2f} GB "
                  f"(RSS {res['peak_rss'] / 1e9:.2f}), {res['evaluations']} evaluations",
                  flush=True)  # fmt: skip
    first = rows[0][1]
    benches = [first["bench"], *first.get("extra_benches", [])]
    print(f"default campaign, {args.steps} steps, {len(benches)} search benches: "
          f"{', '.join(Path(b).stem for b in benches)}")  # fmt: skip
    print(f"{'run':<24} {'wall s':>8} {'peak PSS GB':>12} {'evaluations':>12} {'evals/s':>8}")
    for label, res in rows:
        print(
            f"{label:<24} {res['wall']:>8.1f} {res['peak_pss'] / 1e9:>12.2f} "
            f"{res['evaluations']:>12} {res['evaluations'] / res['wall']:>8.2f}"
        )
    warm = rows[1][1]
    print(f"best proxy (warm run): {warm['formula']}  search fitness {warm['fitness_search']:.4f}")
    for row in warm.get("heldout_models", []):
        print(f"  held out {row['model']}: S@topk {row['spearman@topk']:.4f}")


if __name__ == "__main__":
    main()
