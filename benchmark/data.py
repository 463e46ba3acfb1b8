"""Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist`` package or ``EMQ_DATA``)."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DEBIAN_PATH = Path("/usr/share/datasets/fashion-mnist")
# Per-pixel mean/std of the Fashion-MNIST training images (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetMissingError(FileNotFoundError):
    """Raised when the Fashion-MNIST IDX files cannot be found."""


def data_dir() -> Path:
    """Folder holding the IDX files: ``$EMQ_DATA`` if set, else the Debian path."""
    return Path(os.environ.get("EMQ_DATA") or DEBIAN_PATH)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetMissingError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder}: install the Debian package "
        "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or set EMQ_DATA "
        "to a folder holding the IDX files"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable gzip file ({exc}); reinstall the data") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(
            f"{path} is truncated: its header promises {ndim} dimensions; reinstall the data "
            "or point EMQ_DATA at the Fashion-MNIST IDX files"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {dims}, got {data.size} bytes")
    return data.reshape(dims)


@lru_cache(maxsize=2)
def _load_raw(split: str, folder: str) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lbl_stem = FILES[split]
    img_path, lbl_path = _find(Path(folder), img_stem), _find(Path(folder), lbl_stem)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    fix = "; reinstall the data or point EMQ_DATA at the Fashion-MNIST IDX files"
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.shape[0] == 0:
        raise ValueError(f"{img_path} holds an array of shape {list(images.shape)}, not "
                         f"28x28 images [N, 28, 28]{fix}")  # fmt: skip
    if labels.ndim != 1:
        raise ValueError(f"{lbl_path} holds an array of shape {list(labels.shape)}, not one "
                         f"label per image [N]{fix}")  # fmt: skip
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {img_path} holds {images.shape[0]} images but {lbl_path} "
                         f"{labels.shape[0]} labels{fix}")  # fmt: skip
    if labels.max() > 9:
        raise ValueError(f"{lbl_path} holds label {int(labels.max())}: Fashion-MNIST labels "
                         f"are 0 to 9{fix}")  # fmt: skip
    return images, labels


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return normalized images ``[N, 1, 28, 28]`` (float32) and labels ``[N]`` (int64)."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    images, labels = _load_raw(split, str(data_dir()))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - MEAN) / STD
    return x, torch.from_numpy(labels.astype(np.int64))


def split_size(split: str) -> int:
    """Number of images in a split of the data folder in use."""
    return len(_load_raw(split, str(data_dir()))[1])


def data_fingerprint(split: str) -> str:
    """Content hash of a split's images and labels (recorded in bench files)."""
    images, labels = _load_raw(split, str(data_dir()))
    h = hashlib.sha256()
    h.update(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()[:16]


def calibration_batch(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch of ``n`` training images and labels (never test images)."""
    images, labels = _load_raw("train", str(data_dir()))
    if not 0 < n <= len(images):
        raise ValueError(f"calibration batch size must be in 1..{len(images)}, got {n}"
                         + (f" (the training split in {data_dir()} holds {len(images)} images)"
                            if n > len(images) else ""))  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:n].numpy()
    # Normalized after indexing (element-wise, so the values of ``load_split``'s), not all
    # 60,000 images for every batch.
    x = torch.from_numpy(images[idx].astype(np.float32) / 255.0).unsqueeze(1)
    return (x - MEAN) / STD, torch.from_numpy(labels[idx].astype(np.int64))
