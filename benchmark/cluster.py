"""Running parallel work on a Dask cluster instead of local joblib processes.

``connected(address)`` opens a ``distributed.Client`` (or yields ``None`` for local runs)
with a bounded timeout and a clear error; ``pool(client, jobs, scatter)`` activates joblib's
dask backend around ``joblib.Parallel`` calls, sending ``scatter`` (large shared inputs) to
every worker once. Code that runs ``Parallel`` is the same for both: it only asks ``pool``
for the ``n_jobs`` to use.

Dask is an optional dependency (the ``cluster`` extra); it is imported only when a scheduler
address is given.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler, and to see at least one worker
ENV_VAR = "EMQ_SCHEDULER"
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 32 * 2**20


class ClusterError(ValueError):
    """The scheduler cannot be reached or has no workers (a user error: one line, exit 2)."""


def scheduler_address(arg: str | None) -> str | None:
    """The scheduler to use: ``--scheduler``, else ``$EMQ_SCHEDULER``, else ``None`` (local)."""
    address = (arg if arg is not None else os.environ.get(ENV_VAR, "")).strip()
    return address or None


def _check_address(address: str) -> None:
    """Refuse a malformed address before ``Client`` is built (it would hang, then warn)."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ClusterError(
            f"invalid scheduler address {address!r} ({exc}); expected tcp://HOST:PORT, the "
            "address 'dask scheduler' prints"
        ) from None


def connect(address: str, timeout: float | None = None) -> Any:
    """A ``distributed.Client`` on ``address`` with at least one worker, within ``timeout`` s
    (default ``CONNECT_TIMEOUT``).

    Raises ``ClusterError`` naming the address and the fix when dask is not installed, the
    address is malformed, the scheduler does not answer, or no worker has joined it.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError(
            f"--scheduler {address} needs dask: pip install -e '.[cluster]' "
            "(or drop --scheduler to run locally)"
        ) from None
    _check_address(address)
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        cause = " ".join(str(exc).split())
        cause = "" if "timed out" in cause.lower() else f" ({cause})"
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s{cause}: "
            f"start one with 'dask scheduler' and workers "
            f"with 'dask worker {address}', check the address, or drop --scheduler "
            f"(and unset {ENV_VAR}) to run locally"
        ) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise ClusterError(
            f"the Dask scheduler at {address} has no worker after {timeout:g} s: start some "
            f"with 'dask worker {address}', or drop --scheduler to run locally"
        ) from None
    return client


@contextmanager
def connected(address: str | None, timeout: float | None = None) -> Iterator[Any]:
    """``connect(address)`` for the duration of the block, or ``None`` when no address.

    Losing the scheduler (or a task's workers, repeatedly) inside the block becomes a
    ``ClusterError`` that says how to resume.
    """
    if address is None:
        yield None
        return
    from distributed import CancelledError, KilledWorker
    from distributed.comm import CommClosedError

    client = connect(address, timeout)
    try:
        yield client
    except (CancelledError, KilledWorker, CommClosedError) as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(
            f"lost the Dask cluster at {address} ({cause}); finished results are saved: "
            "rerun the command to resume"
        ) from exc
    finally:
        client.close()


def package_version(package: str) -> str | None:
    """The installed version of ``package`` in this process, or None if not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_workers(client: Any, package: str, expected: str | None) -> None:
    """Refuse a cluster whose workers lack ``package`` or run another version of it.

    The probe is sent by value (a closure), so it runs on a worker where the package
    cannot even be imported; a mismatch would otherwise surface as an unpickling error
    deep in a task, or as results computed by other code.
    """

    def probe() -> str | None:
        import importlib.metadata

        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    for worker, version in sorted(client.run(probe).items()):
        if version is None:
            raise ClusterError(
                f"Dask worker {worker} does not have {package} installed: run "
                f"'pip install -e .' (this checkout) in the worker's environment"
            )
        if version != expected:
            raise ClusterError(
                f"Dask worker {worker} runs {package} {version}, this process {expected}: "
                "install the same version on every worker"
            )


def workers_can_read(client: Any, paths: Sequence[str]) -> bool:
    """Whether every worker sees each of ``paths`` as a file of the size it has here."""
    sizes = {p: os.path.getsize(p) for p in paths if os.path.isfile(p)}
    if len(sizes) != len(paths):
        return False

    def probe() -> dict[str, int]:
        import os

        return {p: os.path.getsize(p) for p in sizes if os.path.isfile(p)}

    return all(seen == sizes for seen in client.run(probe).values())


@contextmanager
def pool(client: Any, jobs: int = 1, scatter: Sequence[object] = ()) -> Iterator[int]:
    """Where ``joblib.Parallel`` calls in the block run; yields the ``n_jobs`` to give them.

    Without a client: local joblib (loky) with ``jobs`` processes. With one: joblib's dask
    backend on every worker thread of the cluster, and each object of ``scatter`` sent once
    to every worker (tasks then receive the worker's copy instead of a pickled argument;
    pass the very same objects to ``delayed``).
    """
    if client is None:
        yield jobs
        return
    from joblib import parallel_config

    client.register_plugin(_fast_allocation_plugin()(), name="emq-fast-allocation")
    backend = _cluster_backend()(client=client, scatter=list(scatter) or None)
    with parallel_config(backend=backend):
        yield -1


@cache
def _cluster_backend() -> type:
    """joblib's dask backend, reporting at least two jobs.

    ``joblib.Parallel`` runs the tasks itself, in this process, when its backend reports one
    job; on a cluster of one single-threaded worker they must still go to that worker.
    """
    from joblib._dask import DaskDistributedBackend

    class ClusterBackend(DaskDistributedBackend):
        def effective_n_jobs(self, n_jobs: int) -> int:
            return max(2, super().effective_n_jobs(n_jobs))

    return ClusterBackend


def raise_mmap_threshold() -> None:
    """Keep large temporary tensors on the heap (glibc only; elsewhere nothing happens).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins
    glibc's mmap threshold at 128 KiB: every activation tensor of a forward pass is then
    mapped, page-faulted and unmapped anew, and a bench configuration took 3.5x as long on
    a worker as in a plain process. 32 MiB is glibc's largest threshold.
    """
    if (c := libc()) is not None:
        c.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


@cache
def libc() -> ctypes.CDLL | None:
    """The C library (glibc on Linux), or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@cache
def _fast_allocation_plugin() -> type:
    """A worker plugin that runs ``raise_mmap_threshold`` on every worker, also later ones."""
    from distributed import WorkerPlugin

    class FastAllocation(WorkerPlugin):
        idempotent = True

        def setup(self, worker) -> None:
            raise_mmap_threshold()

    return FastAllocation
