"""Shared fixtures for the benchmark tests: real Fashion-MNIST data and the shipped models.

Everything expensive (test set, trained models, a quantization simulator, one small bench
file) is built once per session and reused; tests must not modify what they receive.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch

from benchmark.bench import Bench, build_bench, default_bench
from benchmark.data import calibration_batch, load_split
from benchmark.models import load_model
from benchmark.ptq import QuantSim
from emq.context import bench_evaluator

# Test images used where the full 10k set is not needed (first N of the test split).
SUBSET = 2000
# Random configurations in the shared bench: 4 uniform + BENCH_CONFIGS random rows,
# measured on the first BENCH_IMAGES test images (``--test-images``; shipped benches use all).
BENCH_CONFIGS = 2
BENCH_SEED = 0
BENCH_IMAGES = 1000
# Calibration images of the proxy inputs in campaign and fitness tests (campaigns use 128).
CALIB = 32


@pytest.fixture(scope="session")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The full Fashion-MNIST test split (normalized images, labels)."""
    return load_split("test")


@pytest.fixture(scope="session")
def test_subset(test_set) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``SUBSET`` test images and labels."""
    x, y = test_set
    return x[:SUBSET], y[:SUBSET]


@pytest.fixture(scope="session")
def resnet20_trained() -> torch.nn.Module:
    """The shipped ResNet-20 checkpoint (eval mode)."""
    return load_model("resnet20")


@pytest.fixture(scope="session")
def mobilenetv2_trained() -> torch.nn.Module:
    """The shipped MobileNetV2 checkpoint (eval mode)."""
    return load_model("mobilenetv2")


@pytest.fixture(scope="session")
def calib() -> torch.Tensor:
    """A seeded calibration batch of training images."""
    return calibration_batch(256, seed=0)[0]


@pytest.fixture(scope="session")
def resnet_sim(resnet20_trained, calib) -> QuantSim:
    """A quantization simulator of the trained ResNet-20 (callers restore ``set_fp``)."""
    return QuantSim(resnet20_trained, calib)


@pytest.fixture
def sim(resnet_sim) -> QuantSim:
    """The shared simulator, reset to full precision before and after each test."""
    resnet_sim.set_fp()
    yield resnet_sim
    resnet_sim.set_fp()


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory) -> dict:
    """One small ResNet-20 bench file (4 uniform + 2 random configs on 1,000 test images),
    built once.

    Returns its ``path``, the ``result`` of ``build_bench`` and the ``n_configs``, ``seed``
    and ``test_images`` it was built with (pass them on to extend it). Tests that modify a
    bench work on a copy.
    """
    path = tmp_path_factory.mktemp("bench") / "resnet20.sqlite"
    result = build_bench(
        "resnet20", BENCH_CONFIGS, BENCH_SEED, path, progress=False, test_images=BENCH_IMAGES
    )
    return {
        "path": path, "result": result, "n_configs": BENCH_CONFIGS, "seed": BENCH_SEED,
        "test_images": BENCH_IMAGES,
    }  # fmt: skip


@pytest.fixture(scope="session")
def inputs_cache(tmp_path_factory):
    """One proxy-inputs cache folder for the whole test run: it is content-keyed, so tests
    that need the same model's inputs with the same settings compute them once."""
    return tmp_path_factory.mktemp("inputs-cache")


@pytest.fixture(scope="session")
def resnet20_bench() -> Bench:
    """The shipped ResNet-20 bench (504 configurations)."""
    return Bench.open(default_bench("resnet20"))


@pytest.fixture(scope="session")
def resnet20_evaluator(resnet20_bench, inputs_cache):
    """An evaluator on the shipped ResNet-20 bench, every input, ``CALIB`` images."""
    return bench_evaluator(resnet20_bench, CALIB, cache=inputs_cache)


@pytest.fixture(scope="session")
def vgg_bench_copy(tmp_path_factory):
    """A 12-row copy of the shipped VGG bench (no build needed), in rollback-journal mode so
    read-only opens leave no -wal/-shm files beside it. Tests copy it before changing it."""
    path = tmp_path_factory.mktemp("vggbench") / "vgg.sqlite"
    shutil.copy(default_bench("vgg"), path)
    con = sqlite3.connect(path)
    with con:
        con.execute("DELETE FROM results WHERE idx >= 12")
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("VACUUM")
    con.close()
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests (restored after): on a machine whose
    cores are busy, more threads make small convolutions and double backward (Hessian-vector
    products) many times slower. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def allocate_env(monkeypatch, tmp_path):
    """For ``emq allocate`` tests: no traceback mode, a private cache, one thread."""
    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
