"""Regression tests of issue 18: every bad input one clear error, every file validated,
one writer per folder. One test (or parametrized group) per class of bad input found by
the hostile-user sweep; ``tests/test_fuzz.py`` generates many more of each."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import files, refused

from benchmark.bench import Bench
from benchmark.lock import LockedError, exclusive, file_lock, run_folder_lock
from emq.cli import main
from emq.commands.common import campaign_settings
from emq.evolve import campaign_identity
from emq.export import python_module
from emq.genome import from_string
from emq.graph import canonical
from emq.score import parse_configs

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "runs" / "reference"
ENV = {**{k: v for k, v in os.environ.items() if k != "EMQ_DEBUG"}, "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("EMQ_DEBUG", raising=False)


# --------------------------------------------------------------------------- valid input crashes


def test_long_inline_configurations_are_not_taken_for_a_path():
    configs = ";".join(",".join(["4"] * 19 + [b]) for b in "2348234")  # 7 configs, 279 chars
    assert len(configs) > 255  # longer than a file name may be
    arr = parse_configs(configs, 20, (2, 3, 4, 8))
    assert arr.shape == (7, 20) and arr[:, -1].tolist() == [2, 3, 4, 8, 2, 3, 4]


def test_long_inline_configurations_reach_validation(capsys):
    bad = ";".join([",".join(["4"] * 20)] * 7 + [",".join(["5"] * 20)])
    refused(["score", "--model", "resnet20", f"--configs={bad}"], capsys, "[5]", "candidates")


def test_broken_pipe_exits_quietly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "emq.cli", "bench", "info", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT,
    )  # fmt: skip
    proc.stdout.close()  # the reader goes away before anything is written (``| head -0``)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell reports it
    assert err == "", err


def test_keyboard_interrupt_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("emq.commands.bench.run_info", interrupted)
    assert main(["bench", "info"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["evolve", "--no-such-option"], ["unrecognized arguments: --no-such-option"]),
        (["bench", "build", "--model", "vgg"], ["required", "--configs", "--out"]),
        (["evolve", "--mode", "fast"], ["--mode", "invalid choice"]),
        (["evolve", "--calib-images", "0"], ["--calib-images '0'", "a number of images"]),
        (["evolve", "--calib-images", "60001"], ["--calib-images"]),
        (
            [
                "bench",
                "build",
                "--model",
                "vgg",
                "--configs",
                "1",
                "--out",
                "x.sqlite",
                "--test-images",
                "2.5",
            ],
            ["--test-images '2.5'"],
        ),  # fmt: skip
        (["score"], ["--model"]),
    ],
)
def test_parser_errors_are_one_line(argv, needles, capsys):
    refused(argv, capsys, *needles)


# --------------------------------------------------------------------------- deep structures


def test_deep_genome_in_a_proxy_file(tmp_path, capsys):
    path = tmp_path / "deep.json"
    doc = {"format": "emq-proxy", "format_version": 1, "genome": ["abs"] * 4000 + ["W"]}
    path.write_text(json.dumps(doc))
    refused(["score", "--proxy", str(path), "--model", "resnet20", "--configs", "4"], capsys,
            str(path), "genome", "1024")  # fmt: skip


def test_deep_formula_is_refused_by_the_parser():
    with pytest.raises(ValueError, match="height"):
        from_string("abs(" * 3000 + "W" + ")" * 3000)


@pytest.mark.parametrize("name", ["proxy.json", "checkpoint.json"])
def test_json_nested_5000_deep(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_text("[" * 5000 + "]" * 5000)
    refused(["score", "--proxy", str(path), "--model", "resnet20", "--configs", "4"], capsys,
            str(path), "nested 5000 levels")  # fmt: skip


# --------------------------------------------------------------------------- run folders


@pytest.fixture
def run_folder(tmp_path, vgg_bench_copy):
    """A valid run folder for ``emq evolve --bench <vgg copy>`` (reference checkpoint)."""
    run = tmp_path / "run"
    run.mkdir()
    ident = campaign_identity(campaign_settings(), Bench.open(vgg_bench_copy))
    (run / "campaign.json").write_text(json.dumps({**ident, "bench": "x", "version": "0.1.0"}))
    shutil.copy(REFERENCE / "checkpoint.json", run / "checkpoint.json")
    return run


def evolve_argv(run: Path, bench: Path) -> list[str]:
    return ["evolve", "--bench", str(bench), "--run", str(run), "--steps", "1"]


CHECKPOINT = json.loads((REFERENCE / "checkpoint.json").read_text())


def _edit(doc: dict, change) -> str:
    doc = json.loads(json.dumps(doc))
    change(doc)
    return json.dumps(doc).replace('"__NaN__"', "NaN")


@pytest.mark.parametrize(
    "file, content, needles",
    [
        ("checkpoint.json", "<dir>", ["not a regular file"]),
        ("checkpoint.json", "[1, 2]", ["top level"]),
        ("checkpoint.json", "42", ["top level"]),
        ("campaign.json", "<dir>", ["not a regular file"]),
        ("campaign.json", '{"settings": null, "bench_fingerprint": {}}', ["'settings'", "null"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d.update(step="ten")), ["'step'"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d.update(history="abc")), ["'history'"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d["population"][0].update(
            fitness="__NaN__")), ["NaN"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d["population"][0].update(fitness=99)),
         ["'population[0].fitness'", "[-1.5, 1]"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d.update(step=1.5)), ["'step'"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d.update(step=-5)), ["'step'"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d.update(population=[])),
         ["'population'", "at least 2"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d.update(hall_of_fame="best")),
         ["'hall_of_fame'"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d.update(step=10)), ["'history'"]),
        ("checkpoint.json", _edit(CHECKPOINT, lambda d: d["population"][1].update(
            genome="nonsense(W)")), ["'population[1]'", "nonsense"]),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)  # fmt: skip
def test_run_folder_files_are_validated(run_folder, vgg_bench_copy, capsys, file, content,
                                        needles):  # fmt: skip
    target = run_folder / file
    if content == "<dir>":
        target.unlink()
        target.mkdir()
    else:
        target.write_text(content)
    before = files(run_folder.parent)
    refused(evolve_argv(run_folder, vgg_bench_copy), capsys, str(target), *needles)
    assert files(run_folder.parent) == before  # nothing written, not even a lock


def test_valid_run_folder_passes_the_checks(run_folder, vgg_bench_copy):
    from emq.evolve import check_run_folder

    ident = campaign_identity(campaign_settings(), Bench.open(vgg_bench_copy))
    assert check_run_folder(run_folder, ident, campaign_settings()) is True


# --------------------------------------------------------------------------- export


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"exported_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_with_null_heldout_imports(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    best = json.loads((REFERENCE / "best.json").read_text())
    best["heldout"] = None
    (run / "best.json").write_text(json.dumps(best))
    assert main(["export", str(run)]) == 0
    module = _import(run / "best_proxy.py")
    assert module.METADATA["heldout"] is None
    assert module.METADATA["fitness_search"] == best["fitness_search"]


def test_export_with_nan_fitness_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    text = (REFERENCE / "best.json").read_text()
    best = json.loads(text)
    text = text.replace(repr(best["fitness_search"]), "NaN", 1)
    (run / "best.json").write_text(text)
    refused(["export", str(run)], capsys, "best.json", "NaN")
    assert files(run) == ["best.json"]


def test_generated_module_never_embeds_data_as_source(tmp_path):
    nasty = ["'''", '"""', "\\", "\n", "null", "NaN", "é\u2028", "__import__('os')"]
    doc = {"formula": "mul(W, b)", "genome": ["mul", "W", "b"], "inputs": ["W", "b"],
           "heldout": None, "notes": nasty, "nested": {"a": [None, True, 1e-300]}}  # fmt: skip
    path = tmp_path / "m.py"
    path.write_text(python_module(canonical(from_string("mul(W, b)")), doc))
    module = _import(path)
    assert module.METADATA == {k: v for k, v in doc.items() if k != "genome"}


# --------------------------------------------------------------------------- late checks


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["bench", "build", "--model", "resnet20", "--configs", "10" * 11], ["--configs"]),
        (["bench", "build", "--model", "resnet20", "--configs", "1e22"], ["--configs"]),
        (["bench", "build", "--model", "vgg", "--configs", "60000"], ["65532", "8 layers"]),
        (["bench", "build", "--model", "vgg", "--configs", "5", "--bits", "2,2"], ["--bits"]),
    ],
)
def test_bench_build_checks_before_any_work(tmp_path, capsys, argv, needles):
    out = tmp_path / "sub" / "b.sqlite"
    refused([*argv, "--out", str(out)], capsys, *needles)
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--budget-bops", "4.5"], ["--budget-bops '4.5'", "(0, 4]"]),
        (["--budget-bops", "1e300"], ["--budget-bops"]),
        (["--budget-bops", "-0.5"], ["--budget-bops"]),
        (["--budget-bops", "0"], ["--budget-bops"]),
        (["--accuracy-target", "nan"], ["--accuracy-target 'nan'", "[0, 100]"]),
        (["--accuracy-target", "150"], ["--accuracy-target"]),
        (["--budget-bops", "0.5", "--bits", "4,4"], ["--bits '4,4'", "twice"]),
        (["--budget-bops", "0.5", "--permutations", "0"], ["--permutations"]),
        (["--budget-bops", "0.5", "--beta", "inf"], ["--beta"]),
    ],
)
def test_allocate_options_are_range_checked(tmp_path, capsys, extra, needles):
    argv = ["allocate", "--model", "resnet20", "--method", "ilp", "--out", str(tmp_path / "o")]
    refused(argv + extra, capsys, *needles)
    assert files(tmp_path) == []


def test_budget_above_what_the_groups_can_cost_is_refused_before_phase1(tmp_path, capsys):
    # 1.5 x W8A8 is more than the default W{2,3,4,8}A8 groups can cost (W8A8 = 1.0); wider
    # groups (W8A16) may, so this is checked once the groups are known, before phase 1.
    argv = ["allocate", "--model", "vgg", "--method", "ilp", "--scorer", "bops",
            "--budget-bops", "1.5", "--out", str(tmp_path / "o")]  # fmt: skip
    refused(argv, capsys, "budget 1.5 is above", "[0.25, 1]")
    assert files(tmp_path) == []


# --------------------------------------------------------------------------- model factories


@pytest.mark.parametrize(
    "spec, needles",
    [
        ("os:system", ["not a model factory"]),
        ("torch.nn:Linear", ["needs arguments"]),
        ("json:loads", ["needs arguments"]),
        ("builtins:exit", ["not a model factory"]),
        ("../etc:passwd", ["module.path:factory"]),
        ("json:nothing_here", ["has no 'nothing_here'"]),
        ("usermodels:exits", ["raised SystemExit"]),
        ("usermodels:returns_list", ["returned list", "torch.nn.Module"]),
        ("usermodels:raises", ["raised RuntimeError", "boom"]),
        ("exits_on_import:make", ["cannot import", "SystemExit"]),
    ],
)
def test_model_factories_are_checked(tmp_path, monkeypatch, capsys, spec, needles):
    (tmp_path / "usermodels.py").write_text(
        "import sys\n"
        "def exits():\n    sys.exit(0)\n"
        "def returns_list():\n    return [1, 2]\n"
        "def raises():\n    raise RuntimeError('boom')\n"
    )
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refused(["score", "--model", spec, "--configs", "4"], capsys, *needles)


def test_a_valid_user_factory_still_works():
    from benchmark.factory import build_model

    model = build_model("benchmark.models:VGGSmall")  # an nn.Module class with defaults
    assert sum(1 for _ in model.parameters()) > 0


# --------------------------------------------------------------------------- bench files


@pytest.mark.parametrize(
    "sql, needles",
    [
        ("UPDATE results SET top1 = 'NaN' WHERE idx = 3", ["[3].top1", "'NaN'", "top-1"]),
        ("UPDATE results SET top1 = -4 WHERE idx = 2", ["top-1"]),
        ("UPDATE results SET top1 = 100.5 WHERE idx = 2", ["top-1"]),
        ("UPDATE results SET config = '5' || substr(config, 2) WHERE idx = 4",
         ["weight bit-width(s) [5]", "candidates"]),
        ("UPDATE results SET config = (SELECT '0' || config FROM results WHERE idx = 0) "
         "WHERE idx = 5", ["appears 2 times"]),
        ("UPDATE meta SET value = 'true' WHERE key = 'schema_version'", ["schema"]),
        ("UPDATE meta SET value = '[2, 2, 4]' WHERE key = 'candidates'", ["'candidates'"]),
        ("UPDATE meta SET value = 'NaN' WHERE key = 'fp_top1'", ["NaN"]),
    ],
)  # fmt: skip
def test_altered_bench_files_are_refused(tmp_path, vgg_bench_copy, capsys, sql, needles):
    path = tmp_path / "b.sqlite"
    shutil.copy(vgg_bench_copy, path)
    with sqlite3.connect(path) as con:
        con.execute(sql)
    con.close()
    refused(["bench", "info", str(path)], capsys, str(path), *needles)


def test_bench_schema_version_true_is_named(tmp_path, vgg_bench_copy, capsys):
    path = tmp_path / "b.sqlite"
    shutil.copy(vgg_bench_copy, path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value = 'true' WHERE key = 'schema_version'")
    con.close()
    refused(["bench", "info", str(path)], capsys, "'schema_version' is true", "schema 1")


def test_bench_directory_is_refused(tmp_path, capsys):
    refused(["bench", "info", str(tmp_path)], capsys, "not a regular file")


# --------------------------------------------------------------------------- groups files


@pytest.mark.parametrize(
    "doc, needles",
    [
        ({"groups": "conv1"}, ["'groups'"]),
        ({"groups": [{"layer": ["conv1"]}]}, ["'groups[0]'"]),
        ({"groups": [{"layers": ["conv1"], "candidates": ["W4"]}]}, ["candidates[0]", "W<bits>"]),
        ({"groups": [{"layers": ["conv1"]}], "extra": 1}, ["unknown key", "extra"]),
    ],
)
def test_groups_files_are_validated_before_the_model(tmp_path, capsys, doc, needles):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(doc))
    argv = ["allocate", "--model", "resnet20", "--method", "ilp", "--budget-bops", "0.5"]
    refused(argv + ["--groups", str(path)], capsys, str(path), *needles)


# --------------------------------------------------------------------------- one writer

HOLDER = """
import sys, time
from benchmark.lock import exclusive
with exclusive(sys.argv[1], "test"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a real second process holding a lock file; yields a function lock -> Popen."""
    procs: list[subprocess.Popen] = []

    def start(lock: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], env=ENV,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_evolve_is_refused_naming_the_pid(tmp_path, vgg_bench_copy, holder, capsys):
    run = tmp_path / "run"
    run.mkdir()
    proc = holder(run_folder_lock(run))
    before = files(tmp_path)
    refused(evolve_argv(run, vgg_bench_copy), capsys, f"PID {proc.pid}", str(run))
    assert files(tmp_path) == before


@pytest.mark.parametrize("command", [["transfer", "--models", "vgg,resnext"], ["ablate"]])
def test_second_transfer_or_ablate_is_refused(tmp_path, holder, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    proc = holder(run_folder_lock(out))
    refused([*command, "--out", str(out)], capsys, f"PID {proc.pid}", str(out))
    assert files(out) == [".emq.lock", ".emq.lock.pid"]


def test_output_folder_of_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    refused(["ablate", "--out", str(tmp_path)], capsys, "notes.txt", "another --out")
    assert files(tmp_path) == ["notes.txt"]


def test_second_bench_build_is_refused_naming_the_pid(tmp_path, holder, capsys):
    out = tmp_path / "b.sqlite"
    proc = holder(file_lock(out))
    argv = ["bench", "build", "--model", "vgg", "--configs", "1", "--out", str(out)]
    refused(argv, capsys, f"PID {proc.pid}", str(out))
    assert not out.exists()


def test_second_baselines_run_is_refused_naming_the_pid(tmp_path, holder, capsys):
    out = tmp_path / "out"
    out.mkdir()
    proc = holder(run_folder_lock(out))
    argv = ["baselines", "--only", "bparams", "--out", str(out)]
    refused(argv, capsys, f"PID {proc.pid}", str(out))
    assert files(out) == [".emq.lock", ".emq.lock.pid"]


def test_second_train_to_one_checkpoint_is_refused_before_training(tmp_path, holder, capsys):
    ckpt = tmp_path / "m.pt"
    proc = holder(file_lock(ckpt))
    argv = ["train", "--model", "vgg", "--epochs", "1", "--out", str(ckpt)]
    refused(argv, capsys, f"PID {proc.pid}", str(ckpt))
    assert not ckpt.exists() and not ckpt.with_suffix(".json").exists()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, holder):
    lock = tmp_path / ".emq.lock"
    proc = holder(lock)
    with pytest.raises(LockedError, match=f"PID {proc.pid}"):
        with exclusive(lock, "x"):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / ".emq.lock.pid").read_text().strip() == str(proc.pid)  # left behind
    with exclusive(lock, "x"):
        assert (tmp_path / ".emq.lock.pid").read_text().strip() == str(os.getpid())
        with exclusive(lock, "x"):  # re-entrant in the holder
            pass
    assert not (tmp_path / ".emq.lock.pid").exists()


def test_lock_is_released_when_the_holder_exits(tmp_path, holder):
    lock = tmp_path / ".emq.lock"
    proc = holder(lock)
    proc.terminate()
    proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with exclusive(lock, "x"):
                break
        except LockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


# --------------------------------------------------------------------------- killed allocate


def test_allocate_killed_in_phase_1_resumes_to_the_same_allocation(tmp_path, capsys, monkeypatch):
    """kill -9 while measured-SQNR phase 1 runs: the cache holds whole entries only, and
    the rerun gives the allocation of an uninterrupted run (both reruns in this process:
    only the killed run needs its own)."""
    argv = [sys.executable, "-m", "emq.cli", "allocate", "--model", "vgg", "--method",
            "ilp", "--scorer", "sqnr-measured", "--budget-bops", "0.5", "--verify", "0",
            "--json"]  # fmt: skip

    def cmd(name: str) -> list[str]:
        return [*argv, "--out", str(tmp_path / name)]

    env = {**ENV, "EMQ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd("killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    cache = tmp_path / "cache" / "allocate"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(cache.glob("*.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "phase 1 ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for f in cache.glob("*.json"):
        assert isinstance(json.loads(f.read_text()), dict)  # never a torn file
    assert not list((tmp_path / "killed").glob("*.json"))  # no allocation half-written

    def result(name: str, cache_root: Path) -> dict:
        monkeypatch.setenv("EMQ_CACHE", str(cache_root))
        code = main(cmd(name)[3:])  # without "python -m emq.cli"
        out, err = capsys.readouterr()
        assert code == 0, err
        doc = json.loads(out)
        return {k: doc[k] for k in ("w_bits", "a_bits", "test_top1")}

    assert result("resumed", tmp_path / "cache") == result("clean", tmp_path / "fresh")
