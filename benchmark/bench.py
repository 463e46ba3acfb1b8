"""The cached bench: measured PTQ accuracy of many bit configurations, in one SQLite file.

Building (``build_bench``) commits each result as it finishes and resumes after a crash;
reading (``Bench``) gives immutable arrays, NAS-Bench-201 style.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from tqdm import tqdm

from benchmark.adaround import AdaRounder, AdaRoundSettings, check_rounding
from benchmark.cluster import pool
from benchmark.data import calibration_batch, data_dir, data_fingerprint, load_split, split_size
from benchmark.factory import build_model, is_zoo_model
from benchmark.lock import exclusive, file_lock
from benchmark.models import check_model_name, checkpoint_path
from benchmark.ptq import DEFAULT_BITS, QuantSim, bops, check_bits, layer_table
from benchmark.quantizers import CLIP_GRID, state_fingerprint
from benchmark.schemas import (
    IDENTITY_KEYS,
    MAX_ROWS,
    SCHEMA_VERSION,
    FileFormatError,
    check_bench_meta,
    check_bench_rows,
    parse_json,
)

SHIPPED = Path(__file__).resolve().parent / "benches"
# Images in the Fashion-MNIST test split: a bench measures the first ``test_images`` of them.
TEST_IMAGES = 10000
# Meta keys that must agree before results are added to a file: the identity, and the test
# images (not in the fingerprint campaigns record: every bench before the option used all).
EXTEND_KEYS = (*IDENTITY_KEYS, "test_images")


class BenchError(FileFormatError):
    """A bench file is missing, corrupt, or does not match the requested settings."""


def default_bench(model: str = "resnet20") -> Path:
    """Path of a shipped bench file."""
    return SHIPPED / f"{check_model_name(model)}.sqlite"


def config_key(w_bits: Sequence[int], a_bits: Sequence[int]) -> str:
    """Primary key of a configuration: ``"w1,w2,...|a1,a2,..."``."""
    return ",".join(map(str, w_bits)) + "|" + ",".join(map(str, a_bits))


@dataclass(frozen=True)
class BenchSpec:
    """Everything that determines a bench's measurements (picklable, sent to workers)."""

    model: str
    checkpoint: str
    candidates: tuple[int, ...] = DEFAULT_BITS
    act_bits: int = 8
    calib_images: int = 512
    calib_seed: int = 0
    clip_grid: int = CLIP_GRID
    rounding: str = "nearest"
    adaround: AdaRoundSettings | None = None
    test_images: int = TEST_IMAGES

    def quantizer(self) -> dict:
        extra = {}
        if self.rounding == "adaround":
            extra["adaround"] = (self.adaround or AdaRoundSettings()).to_dict()
        return {
            "weights": "per-channel symmetric narrow-range, MSE clipping",
            "activations": "per-tensor asymmetric, min/max calibration",
            "clip_grid": self.clip_grid,
            "calib_images": self.calib_images,
            "calib_seed": self.calib_seed,
            "rounding": self.rounding,
            **extra,
        }


@dataclass(frozen=True, eq=False)
class SimulatorInputs:
    """What building the simulator reads from disk, loaded once by the coordinator.

    Sent to the workers of a Dask cluster (once per worker), which may have neither the
    checkpoint nor the dataset. Equal and hashed by a content token, so a worker's simulator
    cache keys on it.
    """

    spec: BenchSpec
    model: torch.nn.Module
    calib: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    adaround_images: torch.Tensor | None = None
    rounding_masks: dict | None = None

    @classmethod
    def load(cls, spec: BenchSpec, rounder: AdaRounder | None = None) -> SimulatorInputs:
        """Read from disk; ``rounder``'s learned rounding (an AdaRound bench) travels too."""
        model = build_model(spec.model, spec.checkpoint or None)
        calib, _ = calibration_batch(spec.calib_images, spec.calib_seed)
        x, y = load_split("test")
        if spec.test_images < len(x):  # copies: a view would pickle the whole split
            x, y = x[: spec.test_images].clone(), y[: spec.test_images].clone()
        if rounder is None:
            return cls(spec, model, calib, x, y)
        return cls(spec, model, calib, x, y, rounder.images, dict(rounder.cache.masks))

    @cached_property
    def token(self) -> str:
        h = hashlib.sha256(repr(self.spec).encode())
        h.update(state_fingerprint(self.model).encode())
        for t in (self.calib, self.x, self.y):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SimulatorInputs) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)


_SIMULATORS = threading.local()


def _simulator(source: BenchSpec | SimulatorInputs) -> tuple[QuantSim, torch.Tensor, torch.Tensor]:
    """This thread's quantization simulator and test set, built once per worker thread.

    Built from the project's files (a ``BenchSpec``) or from inputs the coordinator sent.
    One per thread, not per process: ``set_config`` mutates the simulator, and a Dask
    worker runs several tasks at once in threads.
    """
    cache = _SIMULATORS.__dict__.setdefault("by_source", {})
    if source not in cache:
        if len(cache) >= 2:
            cache.pop(next(iter(cache)))
        cache[source] = _build_simulator(source)
    return cache[source]


def _build_simulator(
    source: BenchSpec | SimulatorInputs,
) -> tuple[QuantSim, torch.Tensor, torch.Tensor]:
    inputs = source if isinstance(source, SimulatorInputs) else SimulatorInputs.load(source)
    spec, model, calib, x, y = inputs.spec, inputs.model, inputs.calib, inputs.x, inputs.y
    sim = QuantSim(
        model, calib, spec.clip_grid, spec.rounding, spec.adaround, inputs.adaround_images
    )
    if sim.rounder is not None and inputs.rounding_masks:
        sim.rounder.cache.masks.update(inputs.rounding_masks)
    return sim, x, y


def measure(
    source: BenchSpec | SimulatorInputs, w_bits: Sequence[int], a_bits: Sequence[int],
    threads: int = 0,
):  # fmt: skip
    """Measure one configuration on the bench's test images: (key, top1, loss, seconds)."""
    if threads:
        torch.set_num_threads(threads)
    sim, x, y = _simulator(source)
    start = time.perf_counter()
    sim.set_config(list(w_bits), list(a_bits))
    top1, loss = sim.evaluate(x, y)
    return config_key(w_bits, a_bits), top1, loss, time.perf_counter() - start


# Random configurations are drawn with rejection of repeats: asking for (nearly) every
# non-uniform configuration of a small space would take forever, so at most this fraction.
MAX_SAMPLED_FRACTION = 0.5


def check_config_count(num_layers: int, n: int, candidates: Sequence[int]) -> None:
    """Refuse a ``--configs`` count the sampler cannot produce (before any work is done)."""
    if n < 0:
        raise ValueError(f"--configs must be >= 0, got {n}")
    k = len(set(candidates))
    available = k**num_layers - k  # exact integer arithmetic, no overflow
    limit = int(available * MAX_SAMPLED_FRACTION) if available > 1000 else available
    if n > limit:
        raise ValueError(
            f"--configs {n}: only {available} non-uniform configurations exist for "
            f"{num_layers} layers and bits {sorted(set(candidates))}; the sampler draws at most "
            f"{limit}"
        )


def sample_configs(
    num_layers: int, n: int, seed: int, candidates: Sequence[int] = DEFAULT_BITS
) -> list[tuple[int, ...]]:
    """The uniform configurations, then ``n`` distinct i.i.d. uniform random ones.

    The sequence is prefix-stable: asking for more configurations extends it.
    """
    cands = np.asarray(sorted(candidates))
    check_config_count(num_layers, n, candidates)
    out = [tuple([int(b)] * num_layers) for b in cands]
    seen = set(out)
    rng = np.random.default_rng(seed)
    while len(out) < n + len(cands):
        row = tuple(int(b) for b in cands[rng.integers(0, len(cands), num_layers)])
        if row not in seen:
            seen.add(row)
            out.append(row)
    return out


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute(
            "CREATE TABLE IF NOT EXISTS results (config TEXT PRIMARY KEY, idx INTEGER NOT NULL,"
            " top1 REAL NOT NULL, loss REAL NOT NULL, bops REAL NOT NULL, seconds REAL NOT NULL)"
        )
    except sqlite3.DatabaseError as exc:
        con.close()
        raise BenchError(f"{path} is not a valid bench file ({exc}); choose another --out") from exc
    return con


def _check_is_bench(path: Path) -> None:
    """Refuse to add bench tables to some other program's SQLite file."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise BenchError(f"{path} is not a valid bench file ({exc}); choose another --out") from exc
    if tables and tables != {"meta", "results"}:
        raise BenchError(f"{path} is an SQLite file of something else; choose another --out")


META_VALUE_BYTES = 4 * 2**20  # the largest meta value (the layer table) is a few kB


def _read_meta(con: sqlite3.Connection, source: Path | str) -> dict:
    """The meta table, each value strict JSON within limits (not yet schema-checked)."""
    meta = {}
    for key, value in con.execute("SELECT key, value FROM meta LIMIT 1000"):
        where = f"{source} (meta table, key {str(key)[:60]!r})"
        if not isinstance(key, str) or not isinstance(value, str):
            raise BenchError(f"{where}: expected a text key and a JSON text value")
        meta[key] = parse_json(value, where, max_bytes=META_VALUE_BYTES)
    return meta


def _existing_meta(path: Path) -> dict:
    """Meta of an existing bench file, read without changing it (``{}`` for an empty file)."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return {}
    if not path.is_file():
        raise BenchError(f"{path} is not a regular file; choose another --out")
    _check_is_bench(path)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            meta = _read_meta(con, path) if "meta" in tables else {}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise BenchError(f"{path} is not a valid bench file ({exc}); choose another --out") from exc
    return check_bench_meta(meta, str(path)) if meta else meta


def _mismatch(old: dict, new: dict) -> list[str]:
    return [k for k in EXTEND_KEYS if k in old and old[k] != new[k]]


def build_bench(
    model: str,
    n_configs: int,
    seed: int,
    out: Path | str,
    jobs: int = 1,
    checkpoint: Path | str | None = None,
    candidates: Sequence[int] = DEFAULT_BITS,
    act_bits: int = 8,
    progress: bool = True,
    rounding: str = "nearest",
    adaround: AdaRoundSettings | None = None,
    client: Any = None,
    test_images: int = TEST_IMAGES,
) -> dict:
    """Measure ``n_configs`` random configurations (plus the uniform ones) into ``out``.

    Top-1 and loss are measured on the first ``test_images`` images of the test split (all
    10,000 by default; fewer make a quick, noisier bench, recorded in the file's meta).

    Each result is committed as it finishes; rerunning the same command resumes. Results
    are never mixed with a file whose model, data or quantizer fingerprints differ. With a
    ``distributed.Client``, configurations are measured on its workers (``jobs`` is then
    unused); only this process writes the file.
    """
    if n_configs < 0:
        raise ValueError(f"--configs must be >= 0, got {n_configs}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    check_bits(candidates, range(2, 17), "candidate bit-width")
    if len(set(candidates)) != len(list(candidates)):
        raise ValueError(f"candidate bit-widths {list(candidates)} contain duplicates")
    check_bits([act_bits], range(2, 17), "activation bit-width")
    check_rounding(rounding)
    if not 1 <= int(test_images) <= TEST_IMAGES:
        raise ValueError(f"--test-images must be in 1..{TEST_IMAGES}, got {test_images}")
    if is_zoo_model(model):
        ckpt = str(Path(checkpoint or checkpoint_path(model)).resolve())
    else:  # a user's module.path:factory: its checkpoint, else the factory's own weights
        ckpt = str(Path(checkpoint).resolve()) if checkpoint else ""
    spec = BenchSpec(
        model, ckpt, tuple(sorted(int(c) for c in candidates)), int(act_bits),
        rounding=rounding, adaround=adaround if rounding == "adaround" else None,
        test_images=int(test_images),
    )  # fmt: skip
    net = build_model(model, ckpt or None)
    layers = layer_table(net)
    check_config_count(len(layers), n_configs, spec.candidates)  # before any file is written
    available = split_size("test")
    if spec.test_images > available:  # else the meta would claim images never measured
        raise ValueError(
            f"--test-images {spec.test_images}: the test split in {data_dir()} holds only "
            f"{available} images; pass --test-images {available} or less, or point EMQ_DATA "
            "at the full Fashion-MNIST files"
        )
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "model_fingerprint": state_fingerprint(net),
        "data_fingerprint": data_fingerprint("test"),
        "quantizer": spec.quantizer(),
        "candidates": list(spec.candidates),
        "act_bits": spec.act_bits,
        "sample_seed": seed,
        "layers": [layer.to_dict() for layer in layers],
        "test_images": spec.test_images,
    }
    out = Path(out)
    _check_extends(out, _existing_meta(out), meta, rounding)  # read-only, before the lock
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(file_lock(out), f"bench file {out}"):
        return _build_locked(out, spec, meta, layers, n_configs, seed, jobs, progress, client)


def _check_extends(out: Path, old: dict, meta: dict, rounding: str) -> None:
    """Refuse to add results to a bench file measured with other settings."""
    bad = _mismatch(old, meta)
    old_rounding = old.get("quantizer", {}).get("rounding", rounding)
    if old_rounding != rounding:
        raise BenchError(
            f"{out} was built with --rounding {old_rounding}, not {rounding}; pass "
            f"--rounding {old_rounding} to extend it, or use another --out"
        )
    if bad:
        raise BenchError(
            f"{out} was built with different {', '.join(bad)}; refusing to mix results "
            "(use another --out, or the settings the file was built with)"
        )


def _build_locked(
    out: Path, spec: BenchSpec, meta: dict, layers: list, n_configs: int, seed: int,
    jobs: int, progress: bool, client: Any,
) -> dict:  # fmt: skip
    """``build_bench``'s work, run while this process holds the bench file's lock."""
    model, rounding = spec.model, spec.rounding
    _check_extends(out, _existing_meta(out), meta, rounding)  # again, now under the lock
    con = _connect(out)
    try:
        old = _read_meta(con, out)
        rounder = None
        if rounding == "adaround":
            # Learn every (layer, bit) rounding here, once, before workers stitch them
            # (nearest rounding has nothing to learn: no simulator is built for it here).
            rounder = _simulator(spec)[0].quantizer
            meta["adaround_cache"] = rounder.key
            rounder.prepare(spec.candidates, progress=progress)
        # On a cluster, the checkpoint, the data and the learned rounding go to the workers
        # (once), not their paths.
        source = SimulatorInputs.load(spec, rounder) if client is not None else spec
        if "fp_top1" not in old:
            sim, x, y = _simulator(source)
            sim.set_fp()
            meta["fp_top1"], meta["fp_loss"] = sim.evaluate(x, y)
        with con:
            for k, v in meta.items():
                if k not in old:
                    con.execute("INSERT INTO meta VALUES (?, ?)", (k, json.dumps(v)))
        configs = sample_configs(len(layers), n_configs, seed, spec.candidates)
        abits = (spec.act_bits,) * len(layers)
        done = {row[0] for row in con.execute("SELECT config FROM results")}
        index = {config_key(c, abits): i for i, c in enumerate(configs)}
        todo = [c for c in configs if config_key(c, abits) not in done]
        macs = [layer.macs for layer in layers]
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
        threads = 1 if client is not None else threads  # one task per worker thread
        bar = tqdm(
            total=len(configs), initial=len(configs) - len(todo), disable=not progress,
            desc=f"bench {model}", unit="cfg",
        )  # fmt: skip
        with pool(client, jobs, scatter=[source]) as n_jobs:
            results = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
                delayed(measure)(source, c, abits, threads) for c in todo
            )
            for key, top1, loss, secs in results:
                w = [int(b) for b in key.split("|")[0].split(",")]
                with con:
                    con.execute(
                        "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                        (key, index[key], top1, loss, bops(macs, w, abits), secs),
                    )
                bar.update(1)
        bar.close()
        total = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        # A finished file in rollback-journal mode: readers (read-only) then leave no
        # -wal/-shm files beside it. Skipped while another connection has it open.
        try:
            con.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass
    finally:
        con.close()
    return {"path": str(out), "configs": total, "measured": len(todo)}


class Bench:
    """A read-only bench: arrays of configurations and their measured accuracy.

    Open with ``Bench.open(path)``; query by configuration with ``query``; split with
    ``split``. Arrays are read-only.
    """

    def __init__(self, path: Path, meta: dict, rows: list[tuple]):
        self.path = path
        self.meta = meta
        self.layers: list[dict] = meta["layers"]
        self.candidates: tuple[int, ...] = tuple(meta["candidates"])
        self.w_bits, self.a_bits = check_bench_rows(rows, meta, str(path))
        self.keys: tuple[str, ...] = tuple(r[0] for r in rows)
        self.accuracy = np.asarray([r[2] for r in rows], dtype=np.float64)
        self.loss = np.asarray([r[3] for r in rows], dtype=np.float64)
        self.bops = np.asarray([r[4] for r in rows], dtype=np.float64)
        self.seconds = np.asarray([r[5] for r in rows], dtype=np.float64)
        for arr in (self.w_bits, self.a_bits, self.accuracy, self.loss, self.bops, self.seconds):
            arr.setflags(write=False)
        self._index = {k: i for i, k in enumerate(self.keys)}

    @classmethod
    def open(cls, path: Path | str) -> Bench:
        """Load a bench file, its meta table and rows checked against the bench schema
        (``benchmark.schemas``); a missing, corrupt, altered or empty file is a clear
        ``BenchError`` naming the file and the field."""
        path = Path(path)
        if not path.exists():
            raise BenchError(f"bench file {path} does not exist (build one with 'emq bench build')")
        if not path.is_file():
            raise BenchError(f"bench file {path} is not a regular file (a directory?)")
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                meta = _read_meta(con, path)
                if meta.get("schema_version") != SCHEMA_VERSION or "layers" not in meta:
                    raise BenchError(
                        f"{path} has bench schema {meta.get('schema_version')!r}, expected "
                        f"{SCHEMA_VERSION}: rebuild it with 'emq bench build'"
                    )
                check_bench_meta(meta, str(path))
                (count,) = con.execute("SELECT COUNT(*) FROM results").fetchone()
                if count > MAX_ROWS:
                    raise BenchError(f"{path} holds {count:,} results, more than {MAX_ROWS:,}")
                rows = con.execute(
                    "SELECT config, idx, top1, loss, bops, seconds FROM results ORDER BY idx"
                ).fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise BenchError(f"{path} is not a readable bench file: {exc}") from exc
        except FileFormatError as exc:
            raise BenchError(str(exc)) from None
        if not rows:
            raise BenchError(f"{path} holds no measured configuration yet")
        try:
            return cls(path, meta, rows)
        except FileFormatError as exc:
            raise BenchError(str(exc)) from None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def rounding(self) -> str:
        """Weight rounding the bench was measured with (``nearest`` or ``adaround``)."""
        return self.meta["quantizer"].get("rounding", "nearest")

    @property
    def adaround(self) -> AdaRoundSettings | None:
        """The AdaRound settings of an AdaRound bench, else None."""
        ada = self.meta["quantizer"].get("adaround")
        return AdaRoundSettings(**ada) if ada else None

    def check_rounding(self, rounding: str) -> None:
        """Raise ``BenchError`` unless the bench was measured with ``rounding``."""
        if check_rounding(rounding) != self.rounding:
            raise BenchError(
                f"{self.path} was built with --rounding {self.rounding}, not {rounding}; pass "
                f"--rounding {self.rounding} or a bench built with --rounding {rounding}"
            )

    @property
    def macs(self) -> np.ndarray:
        return np.asarray([layer["macs"] for layer in self.layers], dtype=np.int64)

    @property
    def params(self) -> np.ndarray:
        return np.asarray([layer["params"] for layer in self.layers], dtype=np.int64)

    @property
    def fingerprint(self) -> dict:
        """The identity of this bench (recorded by campaigns and exported proxies)."""
        return {k: self.meta[k] for k in IDENTITY_KEYS}

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ``BenchError`` unless ``model`` has the weights this bench measured."""
        if state_fingerprint(model) != self.meta["model_fingerprint"]:
            hint = ""
            if not is_zoo_model(self.meta["model"]):
                hint = (
                    "; a factory that draws new random weights on every call needs a fixed "
                    "seed, or a saved state_dict given to every command (--checkpoint)"
                )
            raise BenchError(
                f"the model's weights differ from those {self.path} was measured with; "
                f"pass the checkpoint the bench was built from (--checkpoint){hint}"
            )

    def bit_index(self) -> np.ndarray:
        """``w_bits`` as indices into ``candidates`` (for score-table gathers)."""
        lut = np.full(max(self.candidates) + 1, -1, dtype=np.int64)
        lut[list(self.candidates)] = np.arange(len(self.candidates))
        return lut[self.w_bits]

    def query(self, w_bits: Sequence[int], a_bits: Sequence[int] | None = None) -> dict:
        """Measured results of one configuration (``KeyError`` if it was not measured)."""
        if len(w_bits) != self.num_layers:
            raise ValueError(
                f"config has {len(w_bits)} bit-widths but {self.model} has "
                f"{self.num_layers} quantizable layers"
            )
        check_bits(w_bits, self.candidates)
        a_bits = a_bits if a_bits is not None else [self.meta["act_bits"]] * self.num_layers
        key = config_key([int(b) for b in w_bits], [int(b) for b in a_bits])
        if key not in self._index:
            raise KeyError(f"configuration {key} is not in {self.path}")
        i = self._index[key]
        return {
            "top1": float(self.accuracy[i]),
            "loss": float(self.loss[i]),
            "bops": float(self.bops[i]),
            "seconds": float(self.seconds[i]),
        }

    def split(self, seed: int = 0, heldout: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (search, held-out) index arrays, disjoint and covering the bench."""
        if not 0.0 < heldout < 1.0:
            raise ValueError(f"held-out fraction must be in (0, 1), got {heldout}")
        perm = np.random.default_rng(seed).permutation(len(self))
        cut = int(round(len(self) * (1.0 - heldout)))
        return np.sort(perm[:cut]), np.sort(perm[cut:])

    def info(self) -> dict:
        """Summary of the bench for ``emq bench info``."""
        acc = self.accuracy
        return {
            "path": str(self.path),
            "model": self.model,
            "configs": len(self),
            "fp_top1": self.meta.get("fp_top1"),
            "top1_min": float(acc.min()),
            "top1_median": float(np.median(acc)),
            "top1_max": float(acc.max()),
            "candidates": list(self.candidates),
            "act_bits": self.meta["act_bits"],
            "rounding": self.rounding,
            "test_images": self.meta.get("test_images", TEST_IMAGES),
            "layers": len(self.layers),
            "params": int(self.params.sum()),
            "macs": int(self.macs.sum()),
            "seconds_per_config": float(self.seconds.mean()),
            "quantizer": self.meta["quantizer"],
        }
