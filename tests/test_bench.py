"""Tests for benchmark.bench: building, resuming and refusing bench files; the Bench API."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.bench import (
    IDENTITY_KEYS,
    Bench,
    BenchError,
    BenchSpec,
    build_bench,
    config_key,
    default_bench,
    measure,
    sample_configs,
)
from benchmark.data import data_fingerprint
from benchmark.models import MODELS, checkpoint_path, load_model
from benchmark.ptq import bops, layer_table
from benchmark.quantizers import state_fingerprint

L = 20  # quantizable layers of ResNet-20


@pytest.fixture(scope="module")
def bench(small_bench) -> Bench:
    return Bench.open(small_bench["path"])


def copy_bench(src: Path, dst: Path) -> Path:
    """Copy a bench file (and its WAL, if any) so a test can modify it."""
    shutil.copy(src, dst)
    for suffix in ("-wal", "-shm"):
        side = Path(str(src) + suffix)
        if side.exists():
            shutil.copy(side, Path(str(dst) + suffix))
    return dst


def snapshot(path: Path) -> dict:
    """Everything a reader sees of a bench file."""
    b = Bench.open(path)
    return {
        "meta": b.meta,
        "keys": b.keys,
        "accuracy": b.accuracy.tolist(),
        "loss": b.loss.tolist(),
        "bops": b.bops.tolist(),
        "seconds": b.seconds.tolist(),
    }


# ---------------------------------------------------------------- building


def test_build_result(small_bench):
    n = small_bench["n_configs"]
    assert small_bench["result"] == {
        "path": str(small_bench["path"]),
        "configs": 4 + n,
        "measured": 4 + n,
    }


def test_bench_rows_are_sampled_configs_in_order(bench, small_bench):
    expected = sample_configs(L, small_bench["n_configs"], small_bench["seed"])
    assert len(bench) == len(expected) == 6
    assert [tuple(row) for row in bench.w_bits.tolist()] == expected
    assert bench.keys == tuple(config_key(c, [8] * L) for c in expected)


def test_bench_arrays(bench):
    n = len(bench)
    assert bench.w_bits.shape == (n, L) and bench.w_bits.dtype == np.int64
    assert bench.a_bits.shape == (n, L) and (bench.a_bits == 8).all()
    for arr in (bench.accuracy, bench.loss, bench.bops, bench.seconds):
        assert arr.shape == (n,) and arr.dtype == np.float64
    assert set(np.unique(bench.w_bits)) <= {2, 3, 4, 8}
    assert ((bench.accuracy >= 0) & (bench.accuracy <= 100)).all()
    # Top-1 over N test images is a multiple of 100/N %.
    n_images = bench.meta["test_images"]
    assert bench.info()["test_images"] == n_images == 1000
    assert np.allclose(bench.accuracy * n_images / 100, np.round(bench.accuracy * n_images / 100))
    assert (bench.loss > 0).all() and (bench.seconds > 0).all()


def test_bench_arrays_read_only(bench):
    for arr in (bench.w_bits, bench.a_bits, bench.accuracy, bench.loss, bench.bops, bench.seconds):
        with pytest.raises(ValueError):
            arr[0] = 0


def test_bench_bops_column(bench):
    macs = bench.macs
    for w, a, b in zip(bench.w_bits, bench.a_bits, bench.bops, strict=True):
        assert b == bops(macs, w, a)
    w8 = bench.query([8] * L)["bops"]
    assert w8 == 64 * int(macs.sum())
    assert bench.query([4] * L)["bops"] == pytest.approx(w8 / 2)


def test_bench_meta_identifies_model_and_data(bench):
    model = load_model("resnet20")
    assert bench.model == "resnet20"
    assert bench.meta["model_fingerprint"] == state_fingerprint(model)
    assert bench.meta["data_fingerprint"] == data_fingerprint("test")
    assert bench.layers == [layer.to_dict() for layer in layer_table(model)]
    assert bench.candidates == (2, 3, 4, 8)
    assert bench.meta["act_bits"] == 8
    assert set(bench.fingerprint) == set(IDENTITY_KEYS)
    assert bench.params.sum() == sum(p.numel() for p in model.parameters() if p.ndim > 1) + 10


def test_bench_accuracy_is_sane(bench):
    record = json.loads(checkpoint_path("resnet20").with_suffix(".json").read_text())
    # The folded FP model on all 10,000 test images (the shipped bench) agrees with the
    # accuracy recorded at training time.
    shipped = Bench.open(default_bench("resnet20"))
    assert shipped.meta["test_images"] == 10000
    assert abs(shipped.meta["fp_top1"] - record["test_top1"]) <= 0.05
    fp = bench.meta["fp_top1"]  # on the first 1,000 images
    assert abs(fp - record["test_top1"]) <= 3.0
    acc = {b: bench.query([b] * L)["top1"] for b in (2, 3, 4, 8)}
    assert abs(acc[8] - fp) <= 0.5
    # W4 is nearly lossless here: W8 vs W4 is ordered only up to noise (0.5 points).
    assert acc[8] >= acc[4] - 0.5
    assert acc[4] >= acc[3] >= acc[2]


def test_measure_reproduces_stored_result(bench):
    spec = BenchSpec("resnet20", str(checkpoint_path("resnet20").resolve()), test_images=1000)
    key, top1, loss, secs = measure(spec, [4] * L, [8] * L)
    assert key == config_key([4] * L, [8] * L)
    stored = bench.query([4] * L)
    assert top1 == stored["top1"] and loss == stored["loss"]
    assert secs > 0


# ---------------------------------------------------------------- queries, splits, info


def test_query_round_trip(bench):
    for i in range(len(bench)):
        res = bench.query(bench.w_bits[i].tolist())
        assert res == {
            "top1": bench.accuracy[i],
            "loss": bench.loss[i],
            "bops": bench.bops[i],
            "seconds": bench.seconds[i],
        }
        assert bench.query(bench.w_bits[i], bench.a_bits[i]) == res


def test_query_unmeasured_config(bench):
    config = [2] * (L - 1) + [8]
    assert tuple(config) not in {tuple(r) for r in bench.w_bits.tolist()}
    with pytest.raises(KeyError, match="not in"):
        bench.query(config)
    with pytest.raises(KeyError):
        bench.query([8] * L, [4] * L)


def test_query_wrong_length(bench):
    with pytest.raises(ValueError, match="19 bit-widths") as info:
        bench.query([8] * 19)
    assert "20" in str(info.value)


def test_query_bit_outside_candidates(bench):
    with pytest.raises(ValueError, match=r"\[5\]"):
        bench.query([8] * 19 + [5])


def test_bit_index(bench):
    idx = bench.bit_index()
    assert idx.shape == bench.w_bits.shape
    assert np.array_equal(np.asarray(bench.candidates)[idx], bench.w_bits)


def test_split_deterministic_disjoint_covering(bench):
    search, held = bench.split(seed=3, heldout=0.3)
    s2, h2 = bench.split(seed=3, heldout=0.3)
    assert np.array_equal(search, s2) and np.array_equal(held, h2)
    assert set(search.tolist()).isdisjoint(held.tolist())
    assert sorted(search.tolist() + held.tolist()) == list(range(len(bench)))
    assert len(held) == round(0.3 * len(bench))
    assert np.array_equal(search, np.sort(search))
    # Different seeds give different splits.
    splits = {tuple(bench.split(seed=s)[1].tolist()) for s in range(6)}
    assert len(splits) > 1


@pytest.mark.parametrize("heldout", [0.0, 1.0, -0.2, 1.5])
def test_split_bad_fraction(bench, heldout):
    with pytest.raises(ValueError, match="held-out"):
        bench.split(heldout=heldout)


def test_info(bench):
    info = bench.info()
    assert info["model"] == "resnet20"
    assert info["configs"] == len(bench) == 6
    assert info["layers"] == L
    assert info["candidates"] == [2, 3, 4, 8]
    assert info["act_bits"] == 8
    assert info["top1_min"] <= info["top1_median"] <= info["top1_max"]
    assert info["top1_min"] == bench.accuracy.min() and info["top1_max"] == bench.accuracy.max()
    assert info["macs"] == sum(layer["macs"] for layer in bench.layers)
    assert info["fp_top1"] == bench.meta["fp_top1"]
    assert info["seconds_per_config"] == pytest.approx(bench.seconds.mean())
    json.dumps(info)  # serializable for `emq bench info --json`


# ---------------------------------------------------------------- resume and refusal


def test_resume_measures_only_new_configs(small_bench, tmp_path):
    path = copy_bench(small_bench["path"], tmp_path / "resume.sqlite")
    seed, n = small_bench["seed"], small_bench["n_configs"]
    before = snapshot(path)
    images = small_bench["test_images"]
    again = build_bench("resnet20", n, seed, path, progress=False, test_images=images)
    assert again["measured"] == 0 and again["configs"] == 4 + n
    assert snapshot(path) == before
    more = build_bench("resnet20", n + 1, seed, path, progress=False, test_images=images)
    assert more["measured"] == 1 and more["configs"] == 5 + n
    after = Bench.open(path)
    k = len(before["keys"])
    assert after.keys[:k] == before["keys"]
    assert after.accuracy[:k].tolist() == before["accuracy"]
    assert after.loss[:k].tolist() == before["loss"]
    assert after.seconds[:k].tolist() == before["seconds"]
    assert after.w_bits[k].tolist() == list(sample_configs(L, n + 1, seed)[-1])
    assert after.meta == before["meta"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": 1}, "sample_seed"),
        ({"candidates": (2, 4, 8)}, "candidates"),
        ({"act_bits": 4}, "act_bits"),
        ({"test_images": 2000}, "test_images"),
    ],
)
def test_mismatched_settings_refused(small_bench, tmp_path, change, field):
    path = copy_bench(small_bench["path"], tmp_path / "mismatch.sqlite")
    before = snapshot(path)
    kwargs = {"seed": small_bench["seed"], "test_images": small_bench["test_images"], **change}
    seed = kwargs.pop("seed")
    with pytest.raises(BenchError, match=field):
        build_bench("resnet20", small_bench["n_configs"] + 1, seed, path, progress=False, **kwargs)
    assert snapshot(path) == before


def test_other_checkpoint_refused(small_bench, tmp_path):
    path = copy_bench(small_bench["path"], tmp_path / "other.sqlite")
    before = snapshot(path)
    torch.manual_seed(0)
    ckpt = tmp_path / "untrained.pt"
    torch.save(MODELS["resnet20"]().state_dict(), ckpt)
    with pytest.raises(BenchError, match="model_fingerprint"):
        build_bench("resnet20", 2, small_bench["seed"], path, checkpoint=ckpt, progress=False,
                    test_images=small_bench["test_images"])  # fmt: skip
    assert snapshot(path) == before


def test_bench_error_is_value_error():
    assert issubclass(BenchError, ValueError)


# ---------------------------------------------------------------- bad files


def test_open_missing_file(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        Bench.open(tmp_path / "nope.sqlite")


def test_open_garbage_file(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"definitely not an SQLite database\n" * 200)
    with pytest.raises(BenchError, match="not a readable bench file"):
        Bench.open(path)


def test_build_refuses_garbage_file(tmp_path):
    path = tmp_path / "garbage.sqlite"
    blob = b"definitely not an SQLite database\n" * 200
    path.write_bytes(blob)
    with pytest.raises(BenchError, match="not a valid bench file"):
        build_bench("resnet20", 1, 0, path, progress=False)
    assert path.read_bytes() == blob


def test_open_empty_file(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    with pytest.raises(BenchError, match="not a readable bench file"):
        Bench.open(path)


def test_open_other_schema_version(small_bench, tmp_path):
    path = copy_bench(small_bench["path"], tmp_path / "v2.sqlite")
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(BenchError, match="schema 2"):
        Bench.open(path)


def test_open_bench_without_results(small_bench, tmp_path):
    path = copy_bench(small_bench["path"], tmp_path / "norows.sqlite")
    with sqlite3.connect(path) as con:
        con.execute("DELETE FROM results")
    con.close()
    with pytest.raises(BenchError, match="no measured configuration"):
        Bench.open(path)


def test_open_corrupt_meta_value(small_bench, tmp_path):
    path = copy_bench(small_bench["path"], tmp_path / "badmeta.sqlite")
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value = '{broken' WHERE key = 'layers'")
    con.close()
    with pytest.raises(BenchError):
        Bench.open(path)


# ---------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "vgg16"}, "vgg16"),
        ({"n_configs": -1}, "-1"),
        ({"jobs": 0}, "jobs"),
        ({"candidates": (1, 4)}, r"\[1\]"),
        ({"act_bits": 32}, r"\[32\]"),
        ({"test_images": 0}, "--test-images"),
        ({"test_images": 10001}, "--test-images"),
    ],
)
def test_build_bench_validates_arguments(tmp_path, kwargs, match):
    args = {"model": "resnet20", "n_configs": 1, "seed": 0, "out": tmp_path / "b.sqlite"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_bench(**args, progress=False)
    assert not (tmp_path / "b.sqlite").exists()


def test_default_bench_path():
    assert default_bench("mobilenetv2").name == "mobilenetv2.sqlite"
    with pytest.raises(ValueError, match="vgg16"):
        default_bench("vgg16")


def test_config_key():
    assert config_key([2, 3, 8], [8, 8, 4]) == "2,3,8|8,8,4"


# ---------------------------------------------------------------- sampling


def test_sample_configs_uniform_first_then_distinct():
    configs = sample_configs(L, 30, seed=0)
    assert len(configs) == 34
    assert configs[:4] == [tuple([b] * L) for b in (2, 3, 4, 8)]
    assert len(set(configs)) == len(configs)
    assert all(len(c) == L and set(c) <= {2, 3, 4, 8} for c in configs)
    assert all(isinstance(b, int) for b in configs[10])


def test_sample_configs_prefix_stable():
    short = sample_configs(L, 5, seed=7)
    long = sample_configs(L, 25, seed=7)
    assert long[: len(short)] == short


def test_sample_configs_seeded():
    assert sample_configs(L, 10, seed=1) == sample_configs(L, 10, seed=1)
    assert sample_configs(L, 10, seed=1)[4:] != sample_configs(L, 10, seed=2)[4:]


def test_sample_configs_candidates():
    configs = sample_configs(6, 10, seed=0, candidates=(8, 4))
    assert configs[:2] == [(4,) * 6, (8,) * 6]
    assert all(set(c) <= {4, 8} for c in configs)
    # The candidate order given does not matter.
    assert sample_configs(L, 5, 0, (8, 2, 4, 3)) == sample_configs(L, 5, 0)


def test_sample_configs_exhausts_small_space():
    # 2 layers x 2 candidates: exactly 4 configurations exist (2 uniform + 2 mixed).
    assert sorted(sample_configs(2, 2, seed=0, candidates=(2, 8))) == [
        (2, 2),
        (2, 8),
        (8, 2),
        (8, 8),
    ]


def test_sample_configs_impossible_request_raises():
    # Run in a forked child so a hang is detected (and ended) instead of blocking the suite.
    ctx = multiprocessing.get_context("fork")
    # Only one configuration exists with a single candidate; one random one is asked for.
    child = ctx.Process(target=_expect_value_error, args=(L, 1, 0, (8,)))
    child.start()
    child.join(timeout=3)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung, "sample_configs did not return"
    assert child.exitcode == 0, "sample_configs did not raise ValueError"


def _expect_value_error(*args) -> None:
    try:
        sample_configs(*args)
    except ValueError:
        return
    raise SystemExit(1)


_REPO = Path(__file__).resolve().parents[1]
SHIPPED_BENCHES = sorted(
    [*(_REPO / "benchmark/benches").glob("*.sqlite"), *(_REPO / "examples").glob("*.sqlite")]
)


@pytest.mark.parametrize("shipped", SHIPPED_BENCHES, ids=lambda p: p.name)
def test_reading_a_shipped_bench_leaves_no_file_beside_it(shipped, tmp_path):
    """A finished bench is one file in rollback-journal mode: opening it read-only (every
    command but ``bench build``) creates no ``-wal``/``-shm`` files in the user's folder."""
    copy = tmp_path / shipped.name
    shutil.copyfile(shipped, copy)
    bench = Bench.open(copy)
    assert len(bench) >= 250
    assert sorted(p.name for p in tmp_path.iterdir()) == [shipped.name]
    assert copy.read_bytes() == shipped.read_bytes()
