"""Cost of the proxy inputs of a zoo model: computed cold against read from the cache.

Times ``primitives.inputs.get_inputs`` on a seeded calibration batch twice: once with an
empty cache folder (computes every input and writes the cache file), once more (maps it).
Uses the model's shipped checkpoint when present, else a seeded random init (and says so).
Prints the figures; asserts nothing.

    python -m emq.perf.inputs_speed [--model resnet20] [--batch 128] [--cache-dir DIR]
                                          [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmark.data import calibration_batch
from benchmark.models import MODELS, check_model_name, checkpoint_path, load_model
from primitives.inputs import SUFFIX, InputSettings, cache_key, get_inputs


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="zoo model")
    p.add_argument("--batch", type=int, default=128, help="calibration images")
    p.add_argument("--seed", type=int, default=0, help="batch seed (and random-init seed)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="cache folder (default: a fresh temp dir)"
    )
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        name = check_model_name(args.model)
        x, y = calibration_batch(args.batch, args.seed)
    except ValueError as exc:
        p.error(str(exc))

    ckpt = checkpoint_path(name)
    if ckpt.is_file():
        model, weights = load_model(name), f"shipped checkpoint {ckpt}"
    else:
        torch.manual_seed(args.seed)
        model = MODELS[name]().eval()
        weights = f"random init (seed {args.seed}; no checkpoint at {ckpt})"

    settings = InputSettings()
    folder = args.cache_dir or Path(tempfile.mkdtemp(prefix="emq-inputs-"))
    path = folder / f"{cache_key(model, x, y, settings)}{SUFFIX}"
    if path.exists():
        p.error(f"{path} already exists: pass an empty --cache-dir for a cold run")
    try:
        rss_before = peak_rss_mb()
        start = time.perf_counter()
        cold = get_inputs(model, x, y, settings, cache=folder)
        cold_s = time.perf_counter() - start
        rss_cold = peak_rss_mb()
        start = time.perf_counter()
        warm = get_inputs(model, x, y, settings, cache=folder)
        warm_s = time.perf_counter() - start
        file_mb = path.stat().st_size / 1e6
    finally:
        if args.cache_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    if cold.from_cache or not warm.from_cache:
        raise SystemExit("error: the first call should compute and the second read the cache")

    rows = [
        ("model", f"{name} ({cold.num_layers} quantizable layers), {weights}"),
        ("batch", f"{len(x)} training images (seed {args.seed}), candidates {cold.candidates}"),
        ("settings", f"{len(settings.names)} inputs, "
         f"{settings.hutchinson_samples} Hutchinson samples, clip grid {settings.clip_grid}"),
        ("torch threads", str(torch.get_num_threads())),
        ("cold (compute + save)", f"{cold_s:.2f} s"),
        ("from cache", f"{warm_s:.3f} s"),
        ("ratio cold / cache", f"{cold_s / warm_s:.1f}x"),
        ("inputs size", f"{cold.nbytes() / 1e6:.1f} MB in memory, {file_mb:.1f} MB on disk"),
        ("peak RSS", f"{rss_cold:.0f} MB after the cold call "
         f"(peak before it: {rss_before:.0f} MB)"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
