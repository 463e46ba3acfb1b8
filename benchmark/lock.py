"""One writer at a time: an exclusive lock on a run folder or a bench file.

The lock is the ``filelock`` package's (``flock`` on Unix): the kernel releases it when its
holder exits, however it exits, so a lock left by a killed process is simply taken over.
The holder writes its PID into a sidecar file next to the lock (``<lock>.pid``), so a second
writer is refused with one line naming the process to wait for. The lock file itself stays
in place (``filelock`` keeps it so that waiters share one inode); it holds no data.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

RUN_LOCK = ".emq.lock"  # inside a run folder


class LockedError(ValueError):
    """Another process is writing the same run folder or bench file."""


def run_folder_lock(run: Path | str) -> Path:
    """The lock file of a run folder (inside it)."""
    return Path(run) / RUN_LOCK


def file_lock(path: Path | str) -> Path:
    """The lock file of a single file, e.g. a bench: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is a lock or PID sidecar written by ``exclusive``."""
    return path.name in (RUN_LOCK, RUN_LOCK + ".pid")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder(pid_file: Path) -> str:
    """'PID n' of the lock's holder, as its sidecar says (it may be writing it right now)."""
    for _ in range(20):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and _pid_alive(pid):
            return f"PID {pid}"
        time.sleep(0.05)
    return "PID unknown"


@contextmanager
def exclusive(lock_file: Path | str, what: str) -> Iterator[None]:
    """Hold ``lock_file`` exclusively (re-entrant within this process) while the block runs.

    ``what`` names the locked thing in the refusal, e.g. ``"run folder runs/x"``. The lock
    file's folder must exist. Raises ``LockedError`` at once if another process holds it.
    """
    lock_file = Path(lock_file)
    pid_file = lock_file.with_name(lock_file.name + ".pid")
    lock = FileLock(str(lock_file), timeout=0, is_singleton=True)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise LockedError(
            f"{what} is being written by another emq process ({_holder(pid_file)}); "
            "wait for it to finish or stop it, or use another output"
        ) from None
    first = lock.lock_counter == 1
    try:
        if first:
            tmp = pid_file.with_name(pid_file.name + f".tmp{os.getpid()}")
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, pid_file)
        yield
    finally:
        if first:
            pid_file.unlink(missing_ok=True)
        lock.release()


def nearest_existing(path: Path | str) -> Path | None:
    """``path`` itself if it exists, else its nearest existing parent (what decides whether
    the folder ``path`` can be created)."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists()), None)


def check_folder_path(path: Path | str, option: str, given: Path | str | None = None) -> None:
    """Refuse, before any work, a folder ``path`` (of the option's value ``given``, default
    ``path``) that is a file or lies under a file: it could not be created at the end."""
    existing = nearest_existing(path)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"{option} {given or path}: {existing} is a file, not a "
                         f"folder; use another {option}")  # fmt: skip


@contextmanager
def created_folder(path: Path | str) -> Iterator[Path]:
    """Create the folder ``path`` for the block; when the block fails and the folder was
    created here and holds nothing but lock files, remove it again (nothing left behind)."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created and path.is_dir() and all(is_lock_file(p) for p in path.iterdir()):
            shutil.rmtree(path)
        raise
