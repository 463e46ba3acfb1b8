"""How much the proxy inputs depend on the CPU's instruction set, side by side in one run.

A campaign is only reproducible on another machine if the inputs it reads are. This script
computes a zoo model's proxy inputs (the campaign's default set, on the seeded calibration
batch) in fresh processes under several kernel settings of this one CPU, as another CPU would
run them: PyTorch's native dispatch, its unvectorized kernels (``ATEN_CPU_CAPABILITY=default``),
oneDNN limited to SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``, its convolutions' oldest x86 path) and
one thread (``OMP_NUM_THREADS=1``). For each setting it prints, per input, how many values
differ from the native ones and the largest difference (relative to the largest magnitude of
that input in that layer), and what the default proxy makes of
them on the model's bench: its S@topk and whether it ranks the configurations in the same
order (``emq.fitness.rank_fingerprint``, the identity a campaign's deduplication uses).
EMQ computes the inputs in float64 and rounds them to float32 (``primitives.inputs``, cache
version 3); ``--float32`` measures the design it replaced, the inputs computed in float32
(cache version 2). Asserts nothing.

    python -m emq.perf.input_isa [--models resnet20,mobilenetv2] [--float32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmark.bench import Bench, default_bench
from emq.fitness import rank_fingerprint
from emq.graph import score_table
from emq.metrics import spearman_at_topk
from emq.proxy import DEFAULT_PROXY, load_proxy_document
from emq.scoring import config_scores, rank_scores
from primitives.inputs import load_inputs

SETTINGS = {
    "native": {},
    "ATen unvectorized": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}

# Run in a fresh process per setting: both variables are read once, when torch first
# dispatches a kernel.
CHILD = """
import json, sys, torch
from pathlib import Path
from benchmark.bench import Bench, default_bench
from benchmark.data import calibration_batch
from benchmark.factory import build_model
from emq.evolve import DEFAULT_INPUTS
from primitives.inputs import InputSettings, compute_inputs, save_inputs
out = {"capability": torch.backends.cpu.get_cpu_capability(), "paths": {}}
dtype = getattr(torch, sys.argv[3])
for name in sys.argv[1].split(","):
    bench = Bench.open(default_bench(name))
    x, y = calibration_batch(128, 0)
    settings = InputSettings(candidates=bench.candidates, names=DEFAULT_INPUTS)
    inputs = compute_inputs(build_model(bench.model), x, y, settings, dtype)
    path = Path(sys.argv[2]) / f"{name}.inputs"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_inputs(inputs, path)
    out["paths"][name] = str(path)
print(json.dumps(out))
"""


def compute(models: list[str], env: dict, cache: Path, dtype: str) -> dict:
    run_env = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(models), str(cache), dtype],
        env=run_env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"computing inputs failed under {env}:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(native, other) -> dict[str, tuple[int, int, float]]:
    """Per input name: (values that differ, values, largest difference in a layer relative
    to that layer's largest magnitude of the input)."""
    out: dict[str, list] = {}
    for a_layer, b_layer in zip(native.tensors, other.tensors, strict=True):
        for name, a in a_layer.items():
            a, b = a.numpy(), b_layer[name].numpy()
            diff = a != b
            row = out.setdefault(name, [0, 0, 0.0])
            row[0] += int(diff.sum())
            row[1] += a.size
            if diff.any():
                rel = np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-300)
                row[2] = max(row[2], float(rel))
    return {k: tuple(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2", help="zoo models with a bench")
    p.add_argument(
        "--float32", action="store_true", help="compute in float32 (the design before cache v3)"
    )
    args = p.parse_args(argv)
    dtype = "float32" if args.float32 else "float64"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    proxy = load_proxy_document(json.loads(DEFAULT_PROXY.read_text()), str(DEFAULT_PROXY))
    print(f"default proxy: {proxy.formula}; inputs computed in {dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, env in SETTINGS.items():
            runs[label] = compute(models, env, Path(tmp) / label.replace(" ", "_"), dtype)
            print(f"{label}: computed (torch CPU capability {runs[label]['capability']})")
        for model in models:
            bench = Bench.open(default_bench(model))
            native = load_inputs(Path(runs["native"]["paths"][model]))
            print(f"\n{model} ({bench.num_layers} layers, {len(bench)} configurations)")
            print(f"{'setting':<18} {'input':<5} {'values differing':>24} {'largest diff.':>13}")
            for label in SETTINGS:
                inputs = load_inputs(Path(runs[label]["paths"][model]))
                if label != "native":
                    for name, (n, total, rel) in sorted(compare(native, inputs).items()):
                        share = f"{n:,} of {total:,}"
                        print(f"{label:<18} {name:<5} {share:>24} {rel:>13.2e}")
                table = score_table(proxy.expr, inputs)
                scores = config_scores(table, bench.bit_index())
                topk = spearman_at_topk(rank_scores(scores), bench.accuracy)
                print(f"{label:<18} default proxy S@topk {100 * topk:.4f}, "
                      f"ranking {rank_fingerprint(scores)}")  # fmt: skip
                inputs.release()
            native.release()


if __name__ == "__main__":
    main()
