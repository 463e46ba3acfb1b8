"""One place for on-disk caches and for writing files safely.

* ``cache_dir(kind)``: the folder of one kind of cache (``inputs``, ``adaround``,
  ``allocate``) under one root: ``$EMQ_CACHE``, or the user's cache folder (``platformdirs``).
* ``atomic_path(path)``: write a temporary file beside ``path`` and rename it over ``path``
  only once it is complete, so a reader (or a crash) never sees half a file; the temporary
  file is removed when writing fails. Every cache entry, checkpoint and report goes through it.

Each cache keeps its own content key (what it hashes is what its entries depend on).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_cache_dir

from benchmark.lock import nearest_existing


def cache_root() -> Path:
    """``$EMQ_CACHE``, or the user's cache folder for ``emq``."""
    return Path(os.environ.get("EMQ_CACHE") or user_cache_dir("emq"))


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cache (not created). Refused at once when it could not be
    created: a file in its place or above it, or an existing folder above it that this
    process may not write (not after minutes of computing what it would hold)."""
    root = cache_root()
    folder = root / kind
    where = "EMQ_CACHE" if os.environ.get("EMQ_CACHE") else "the user cache folder"
    existing = nearest_existing(folder)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"cache folder {folder} ({where}) cannot be made: {existing} "
                         "is a file; set EMQ_CACHE to a writable folder")  # fmt: skip
    if existing not in (None, folder) and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cache folder {folder} ({where}) cannot be made: {existing} "
                         "is not writable; set EMQ_CACHE to a writable folder")  # fmt: skip
    return folder


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` (ending in ``suffix``, for writers that insist on
    an extension); renamed over ``path`` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
