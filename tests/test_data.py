"""Tests for benchmark.data: IDX reading, normalization, missing data, calibration batches."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data import (
    FILES,
    MEAN,
    STD,
    DatasetMissingError,
    calibration_batch,
    data_fingerprint,
    load_split,
    read_idx,
)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    """Write one split's image and label files into ``folder``."""
    suffix = ".gz" if gz else ""
    img_stem, lbl_stem = FILES[split]
    write_idx(folder / (img_stem + suffix), images)
    write_idx(folder / (lbl_stem + suffix), labels)


def tiny_split(seed: int, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    return images, labels


# ---------------------------------------------------------------- EMQ_DATA folders


def test_missing_dataset_names_package_and_env(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("EMQ_DATA", str(empty))
    with pytest.raises(DatasetMissingError) as info:
        load_split("train")
    msg = str(info.value)
    assert "dataset-fashion-mnist" in msg and "EMQ_DATA" in msg
    assert str(empty) in msg
    # Callers that only know the standard exception still catch it.
    assert isinstance(info.value, FileNotFoundError)


def test_missing_label_file_is_reported(tmp_path, monkeypatch):
    images, _ = tiny_split(0)
    write_idx(tmp_path / FILES["test"][0], images)
    monkeypatch.setenv("EMQ_DATA", str(tmp_path))
    with pytest.raises(DatasetMissingError, match=FILES["test"][1]):
        load_split("test")


@pytest.mark.parametrize("gz", [False, True])
def test_emq_data_folder_is_read(tmp_path, monkeypatch, gz):
    images, labels = tiny_split(1)
    write_split(tmp_path, "test", images, labels, gz)
    monkeypatch.setenv("EMQ_DATA", str(tmp_path))
    x, y = load_split("test")
    assert x.shape == (5, 1, 28, 28)
    expected = (torch.from_numpy(images.astype(np.float32)) / 255.0 - MEAN) / STD
    torch.testing.assert_close(x[:, 0], expected)
    assert y.tolist() == labels.tolist()


def test_fingerprint_follows_content(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    images, labels = tiny_split(2)
    write_split(a, "test", images, labels, gz=False)
    labels2 = labels.copy()
    labels2[0] = (labels2[0] + 1) % 10
    write_split(b, "test", images, labels2, gz=True)
    monkeypatch.setenv("EMQ_DATA", str(a))
    fa = data_fingerprint("test")
    monkeypatch.setenv("EMQ_DATA", str(b))
    fb = data_fingerprint("test")
    assert fa != fb


def test_image_label_count_mismatch(tmp_path, monkeypatch):
    images, labels = tiny_split(3, n=5)
    write_split(tmp_path, "test", images, labels[:4], gz=False)
    monkeypatch.setenv("EMQ_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="holds 5 images but .* 4 labels"):
        load_split("test")


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images, _ = tiny_split(4, n=3)
    path = write_idx(tmp_path / ("x.idx" + (".gz" if gz else "")), images)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
    assert np.array_equal(out, images)


def test_read_idx_truncated(tmp_path):
    images, _ = tiny_split(5, n=4)
    path = write_idx(tmp_path / "x.idx", images)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_through_load_split(tmp_path, monkeypatch):
    images, labels = tiny_split(6)
    write_split(tmp_path, "test", images, labels, gz=False)
    img = tmp_path / FILES["test"][0]
    img.write_bytes(img.read_bytes()[:-1])
    monkeypatch.setenv("EMQ_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="truncated"):
        load_split("test")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x00", b"hello world, not an IDX file", bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 1])],
    ids=["empty", "short", "text", "float-idx"],
)
def test_read_idx_bad_magic(tmp_path, content):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)


def test_read_idx_header_longer_than_file(tmp_path):
    # Claims 3 dimensions but the file ends inside the header.
    path = tmp_path / "short.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 2]))
    with pytest.raises(ValueError):
        read_idx(path)


@pytest.mark.parametrize("kind", ["not-gzip", "cut-gzip"])
def test_read_idx_corrupt_gzip(tmp_path, kind):
    path = tmp_path / "x.idx.gz"
    if kind == "not-gzip":
        path.write_bytes(b"garbage, not gzip")
    else:
        images, _ = tiny_split(7, n=50)
        blob = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 50]) + images.tobytes())
        path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError):
        read_idx(path)


# ---------------------------------------------------------------- the real data set


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_load_split_shapes_and_dtypes(split, n):
    x, y = load_split(split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    # Fashion-MNIST is class balanced in both splits.
    assert torch.bincount(y).tolist() == [n // 10] * 10


def test_load_split_normalization():
    x, _ = load_split("train")
    # MEAN/STD are the training set's pixel statistics, so the training set is standardized.
    assert abs(float(x.mean())) < 0.01
    assert abs(float(x.std()) - 1.0) < 0.01
    # Black pixels (0) and white pixels (255) map to the ends of the normalized range.
    assert float(x.min()) == pytest.approx((0.0 - MEAN) / STD, abs=1e-6)
    assert float(x.max()) == pytest.approx((1.0 - MEAN) / STD, abs=1e-6)


def test_load_split_returns_fresh_tensors():
    x1, y1 = load_split("test")
    x1[0].fill_(123.0)
    y1[0] = 9 if int(y1[0]) != 9 else 0
    x2, y2 = load_split("test")
    assert float(x2[0].max()) < 10.0
    assert int(y2[0]) != int(y1[0])


def test_load_split_unknown_split():
    with pytest.raises(ValueError, match="'valid'"):
        load_split("valid")


def test_data_fingerprint_stable_and_distinct():
    assert data_fingerprint("test") == data_fingerprint("test")
    assert data_fingerprint("test") != data_fingerprint("train")


# ---------------------------------------------------------------- calibration batches


def test_calibration_batch_seeded():
    x1, y1 = calibration_batch(64, seed=3)
    x2, y2 = calibration_batch(64, seed=3)
    x3, _ = calibration_batch(64, seed=4)
    assert x1.shape == (64, 1, 28, 28) and y1.shape == (64,)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    # No image is drawn twice.
    assert len({row.numpy().tobytes() for row in x1}) == 64


def test_calibration_batch_is_prefix_of_larger_batch():
    small, _ = calibration_batch(16, seed=5)
    large, _ = calibration_batch(48, seed=5)
    assert torch.equal(small, large[:16])


def test_calibration_batch_from_training_set():
    x, y = load_split("train")
    cx, cy = calibration_batch(100, seed=1)
    # Locate each calibration image in the training set by a random projection, then check
    # the match exactly (image and label).
    v = torch.randn(28 * 28, generator=torch.Generator().manual_seed(0))
    proj = x.reshape(len(x), -1) @ v
    cproj = cx.reshape(len(cx), -1) @ v
    for img, label, p in zip(cx, cy, cproj, strict=True):
        near = torch.nonzero((proj - p).abs() < 1e-3).flatten()
        hits = [int(i) for i in near if torch.equal(x[i], img) and int(y[i]) == int(label)]
        assert hits, "calibration image not found in the training set"


def test_calibration_batch_does_not_alias_training_set():
    cx, _ = calibration_batch(8, seed=0)
    cx.fill_(0.0)
    again, _ = calibration_batch(8, seed=0)
    assert float(again.abs().sum()) > 0


@pytest.mark.parametrize("n", [0, -1, 60001])
def test_calibration_batch_bad_size(n):
    with pytest.raises(ValueError, match=rf"got {n}(?!\d)"):
        calibration_batch(n)
