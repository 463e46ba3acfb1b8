"""Bench builds and campaigns on a Dask cluster: a LocalCluster of two worker processes.

The workers get ``EMQ_DATA`` and ``EMQ_CACHE`` pointing nowhere, as on a machine without
the project's files: whatever they need must come from the coordinating process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster, get_task_stream
from joblib import Parallel, delayed

import benchmark.cluster as cluster_module
from benchmark.bench import Bench, build_bench, sample_configs
from benchmark.cluster import (
    ClusterError,
    check_workers,
    connect,
    connected,
    package_version,
    pool,
    scheduler_address,
    workers_can_read,
)
from emq.cli import main
from emq.context import bench_evaluator
from emq.evolve import Campaign, CampaignSettings

NOWHERE = "/nonexistent/emq"
SETTINGS = CampaignSettings(population=8, offspring=4, seed=3, calib_images=32)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
        env={"EMQ_DATA": NOWHERE, "EMQ_CACHE": NOWHERE},
    ) as cluster:  # fmt: skip
        yield cluster


@pytest.fixture
def client(cluster):
    with Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        yield client


def _rows(path: Path) -> dict[str, tuple]:
    """Committed results of a bench file being built (read-only; empty before it exists)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT config, idx, top1, loss, bops, seconds FROM results")
            return {r[0]: r[1:] for r in rows}
        finally:
            con.close()
    except sqlite3.OperationalError:
        return {}


def _measured(bench: Bench) -> list[tuple]:
    """What a bench measured, without the timings."""
    return list(zip(bench.keys, bench.accuracy, bench.loss, bench.bops, strict=True))


def _ran_on_workers(tasks: list[dict], name: str) -> set[str]:
    return {t["worker"] for t in tasks if name in t["key"]}


# ---------------------------------------------------------------- connection


def test_scheduler_address_from_flag_or_environment(monkeypatch):
    monkeypatch.delenv("EMQ_SCHEDULER", raising=False)
    assert scheduler_address(None) is None
    monkeypatch.setenv("EMQ_SCHEDULER", "tcp://10.0.0.1:8786")
    assert scheduler_address(None) == "tcp://10.0.0.1:8786"
    assert scheduler_address("tcp://h:1") == "tcp://h:1"
    assert scheduler_address("") is None  # an empty flag runs locally despite the variable


def test_local_pool_is_plain_joblib():
    with pool(None, 3, scatter=[object()]) as n_jobs:
        assert n_jobs == 3


def test_one_single_threaded_worker_still_gets_the_tasks():
    # joblib runs the tasks in the calling process when its backend reports one job.
    with (
        LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                     dashboard_address=None) as one,
        Client(one) as client,
        pool(client, jobs=1) as n_jobs,
    ):  # fmt: skip
        pids = Parallel(n_jobs=n_jobs)(delayed(os.getpid)() for _ in range(3))
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert len(pids) == 3 and os.getpid() not in pids
    assert all("emq-fast-allocation" in names for names in plugins.values())


def test_malformed_address_is_refused_at_once():
    start = time.perf_counter()
    with pytest.raises(ClusterError, match="invalid scheduler address 'tcp://host'.*HOST:PORT"):
        connect("tcp://host")
    assert time.perf_counter() - start < 5  # parsed, no connection attempt


def test_scheduler_without_workers_is_a_clear_error():
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as empty:
        with pytest.raises(ClusterError, match=f"{empty.scheduler_address} has no worker"):
            connect(empty.scheduler_address, timeout=1)


def test_losing_the_cluster_is_a_clear_error(cluster):
    from distributed.client import FutureCancelledError

    with pytest.raises(ClusterError, match="lost the Dask cluster at .*rerun the command"):
        with connected(cluster.scheduler_address):
            raise FutureCancelledError("batch-1", "scheduler-connection-lost")


def test_unreachable_scheduler_fails_fast_and_writes_nothing(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.chdir(tmp_path)  # evolve's default run folder is under the cwd
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    monkeypatch.delenv("EMQ_SCHEDULER", raising=False)
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT", 3.0)  # the default is 10 s
    build = ["bench", "build", "--model", "resnet20", "--configs", "1",
             "--out", str(tmp_path / "benches" / "b.sqlite"), "--scheduler", address]  # fmt: skip
    evolve = ["evolve", "--steps", "1"]  # the scheduler from the environment
    for argv, scheduler_env in ((build, None), (evolve, address)):
        if scheduler_env:
            monkeypatch.setenv("EMQ_SCHEDULER", scheduler_env)
        start = time.monotonic()
        code = main(argv)
        err = capsys.readouterr().err
        assert time.monotonic() - start < 120  # fails fast, no hang
        assert code == 2
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(
            f"emq: error: cannot reach the Dask scheduler at {address} within 3 s"
        )
        assert "dask scheduler" in err and "--scheduler" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bench building


def test_cli_bench_build_on_cluster_equals_local_build(cluster, small_bench, tmp_path):
    out = tmp_path / "cluster.sqlite"
    argv = ["bench", "build", "--model", "resnet20", "--configs", "0",
            "--seed", str(small_bench["seed"]), "--out", str(out),
            "--test-images", str(small_bench["test_images"]),
            "--scheduler", cluster.scheduler_address]  # fmt: skip
    with Client(cluster) as observer, get_task_stream(observer) as stream:
        assert main(argv) == 0
    assert len(_ran_on_workers(stream.data, "measure")) >= 1  # not run in this process
    local, remote = Bench.open(small_bench["path"]), Bench.open(out)
    assert len(remote) == 4  # the uniform configurations: the first rows of any build
    assert _measured(remote) == _measured(local)[:4]
    assert remote.meta == local.meta  # incl. the FP accuracy


# ---------------------------------------------------------------- campaigns


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory, resnet20_bench, resnet20_evaluator):
    """An evaluator whose inputs cache file is deleted: workers must receive the inputs.

    Loaded from a private copy of the test run's shared inputs file (the same settings)."""
    cache = tmp_path_factory.mktemp("inputs")
    shared = Path(resnet20_evaluator.inputs_path)
    copy = cache / shared.name
    shutil.copyfile(shared, copy)
    ev = bench_evaluator(resnet20_bench, SETTINGS.calib_images, cache=cache)
    assert ev.inputs_path == str(copy)  # read from the copy, not computed again
    copy.unlink()
    return resnet20_bench, ev


def _campaign_state(run: Path) -> dict:
    ck = json.loads((run / "checkpoint.json").read_text())
    keep = ("step", "evaluations", "rng", "population", "hall_of_fame", "osp")
    return {
        **{k: ck[k] for k in keep},
        "best": [h["best"] for h in ck["history"]],
        "median": [h["median"] for h in ck["history"]],
    }


def test_campaign_on_cluster_equals_local_campaign(client, evaluator, tmp_path):
    bench, ev = evaluator
    Campaign(tmp_path / "local", bench, ev, SETTINGS, progress=False).run_steps(3)
    with get_task_stream(client) as stream:
        camp = Campaign(tmp_path / "cluster", bench, ev, SETTINGS, progress=False, client=client)
        camp.run_steps(3)
    assert _ran_on_workers(stream.data, "evaluate_texts")  # not run in this process
    assert _campaign_state(tmp_path / "cluster") == _campaign_state(tmp_path / "local")
    best = [json.loads((tmp_path / r / "best.json").read_text()) for r in ("cluster", "local")]
    assert best[0] == best[1]


# ---------------------------------------------------------------- worker failure


def test_killed_worker_loses_no_committed_result(client, small_bench, tmp_path):
    out = tmp_path / "killed.sqlite"
    n, seed, images = small_bench["n_configs"], small_bench["seed"], small_bench["test_images"]
    total = len(sample_configs(20, n, seed))
    pids = client.run(os.getpid)
    outcome: dict = {}

    def build() -> None:
        try:
            outcome["result"] = build_bench("resnet20", n, seed, out, progress=False,
                                            client=client, test_images=images)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=build)
    thread.start()
    deadline = time.time() + 300
    while len(_rows(out)) < 2 and thread.is_alive() and time.time() < deadline:
        time.sleep(0.1)
    before = _rows(out)
    victim = sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert 2 <= len(before) < total  # the worker died in the middle of the build
    after = _rows(out)
    assert outcome["result"]["configs"] == len(after) == total
    assert {k: after[k] for k in before} == before  # committed rows untouched
    assert _measured(Bench.open(out)) == _measured(Bench.open(small_bench["path"]))


# ---------------------------------------------------------------- worker checks


def test_workers_without_the_project_or_of_another_version_are_refused(client):
    here = package_version("emq")
    check_workers(client, "emq", here)  # the same install: accepted
    with pytest.raises(ClusterError, match=r"runs emq .* this process 0\.0\.0-other"):
        check_workers(client, "emq", "0.0.0-other")
    with pytest.raises(ClusterError, match="does not have no-such-emq-package installed"):
        check_workers(client, "no-such-emq-package", None)


def test_workers_that_see_the_inputs_file_get_the_path_not_the_tensors(
    client, tmp_path, resnet20_bench, resnet20_evaluator
):
    bench, ev = resnet20_bench, resnet20_evaluator  # its inputs file is on this machine
    assert workers_can_read(client, [ev.inputs_path])
    camp = Campaign(tmp_path / "run", bench, ev, SETTINGS, progress=False, client=client)
    shipped, workers = camp._task_setup()
    assert shipped is ev and not shipped.ship_inputs  # workers map the shared file
    assert workers == sum(client.nthreads().values())
    other = tmp_path / "elsewhere.f64"
    assert not workers_can_read(client, [ev.inputs_path, str(other)])
