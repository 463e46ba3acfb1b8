"""Tests for emq.cli: help, ``bench info`` / ``bench build``, and one-line user errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.bench import BenchError
from emq.cli import main


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("EMQ_DEBUG", raising=False)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("emq: error: ") and err.endswith("\n")
    assert err.count("\n") == 1, f"expected one line on stderr, got {err!r}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err


def run_module(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m emq.cli`` in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "EMQ_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "emq.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def copy_bench(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


# ---------------------------------------------------------------- help


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "bench" in out


def test_bench_help_lists_actions(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "build" in out and "info" in out


def test_module_entry_point_help():
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "bench" in proc.stdout


def test_no_command_is_usage_error(capsys):
    # Parser refusals are one line and exit status 2, like every other bad input.
    assert_one_line_error(*run([], capsys), "required", "emq --help")


# ---------------------------------------------------------------- bench info / build


def test_bench_info_table(small_bench, capsys):
    code, out, err = run(["bench", "info", str(small_bench["path"])], capsys)
    assert code == 0 and err == ""
    rows = dict(line.split(None, 1) for line in out.splitlines() if line and " " in line)
    assert rows["model"].strip() == "resnet20"
    assert rows["configs"].strip() == "6"
    assert rows["layers"].strip() == "20"
    # The layer table: one line per quantizable layer after the header.
    assert "conv1" in out and "fc" in out
    assert sum(1 for line in out.splitlines() if line.startswith("layers.")) == 18


def test_bench_info_json(small_bench, capsys):
    code, out, _ = run(["bench", "info", str(small_bench["path"]), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["model"] == "resnet20" and info["configs"] == 6
    assert len(info["layer_table"]) == 20
    assert info["layer_table"][0]["name"] == "conv1"


def test_bench_info_zoo_lists_every_model(capsys):
    from benchmark.models import HELDOUT_MODELS, MODELS

    code, out, _ = run(["bench", "info", "--zoo", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["model"] for r in rows] == list(MODELS)
    assert {r["model"] for r in rows if r["split"] == "held-out"} == set(HELDOUT_MODELS)
    r20 = rows[0]
    assert r20["configs"] == 504 and r20["layers"] == 20 and r20["fp_top1"] > 90
    code, out, _ = run(["bench", "info", "--zoo"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == len(MODELS) + 1


def test_bench_build_resumes_finished_file(small_bench, tmp_path, capsys):
    path = copy_bench(small_bench["path"], tmp_path / "copy.sqlite")
    argv = ["bench", "build", "--model", "resnet20", "--configs", str(small_bench["n_configs"])]
    argv += ["--seed", str(small_bench["seed"]), "--out", str(path), "--json"]
    argv += ["--test-images", str(small_bench["test_images"])]
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert json.loads(out) == {"path": str(path), "configs": 6, "measured": 0}


# ---------------------------------------------------------------- user errors


def test_bench_build_unknown_model(tmp_path, capsys):
    out_file = tmp_path / "x.sqlite"
    argv = ["bench", "build", "--model", "vgg16", "--configs", "1", "--out", str(out_file)]
    assert_one_line_error(*run(argv, capsys), "vgg16", "resnet20")
    assert not out_file.exists()


def test_bench_info_garbage_file(tmp_path, capsys):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"not a database at all\n" * 100)
    assert_one_line_error(*run(["bench", "info", str(path)], capsys), str(path))


def test_bench_info_missing_file(tmp_path, capsys):
    path = tmp_path / "missing.sqlite"
    assert_one_line_error(*run(["bench", "info", str(path)], capsys), str(path))


def test_bench_build_garbage_out_file(tmp_path, capsys):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"not a database at all\n" * 100)
    argv = ["bench", "build", "--model", "resnet20", "--configs", "1", "--out", str(path)]
    assert_one_line_error(*run(argv, capsys), str(path))


def test_bench_build_mismatched_seed(small_bench, tmp_path, capsys):
    path = copy_bench(small_bench["path"], tmp_path / "copy.sqlite")
    argv = ["bench", "build", "--model", "resnet20", "--configs", "3", "--seed", "99",
            "--test-images", str(small_bench["test_images"])]  # fmt: skip
    assert_one_line_error(*run(argv + ["--out", str(path)], capsys), "sample_seed")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--configs", "-1"], "-1"),
        (["--configs", "1", "--jobs", "0"], "jobs"),
        (["--configs", "1", "--bits", "2,1"], "[1]"),
        (["--configs", "1", "--act-bits", "40"], "[40]"),
        (["--configs", "1", "--test-images", "0"], "--test-images"),
        (["--configs", "1", "--test-images", "10001"], "--test-images"),
        (["--configs", "1", "--checkpoint", "/nonexistent/ckpt.pt"], "/nonexistent/ckpt.pt"),
    ],
)
def test_bench_build_bad_arguments(tmp_path, capsys, extra, needle):
    argv = ["bench", "build", "--model", "resnet20", "--out", str(tmp_path / "b.sqlite")]
    assert_one_line_error(*run(argv + extra, capsys), needle)


def test_bench_build_unparsable_bits(tmp_path, capsys):
    argv = ["bench", "build", "--model", "resnet20", "--configs", "1", "--bits", "2,x"]
    out = ["--out", str(tmp_path / "b.sqlite")]
    assert_one_line_error(*run(argv + out, capsys), "--bits '2,x'")
    assert not (tmp_path / "b.sqlite").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["score", "--proxy", "emq", "--model", "resnet20", "--bits", "2,,4", "--configs", "2"],
         "--bits '2,,4': expected comma-separated integers"),
        (["ablate", "--seeds", "0,one"], "--seeds '0,one': expected comma-separated integers"),
    ],
)  # fmt: skip
def test_unparsable_integer_lists_name_the_option(argv, needle, capsys):
    assert_one_line_error(*run(argv, capsys), needle)


def test_train_unknown_model_is_usage_error(capsys):
    assert_one_line_error(*run(["train", "--model", "vgg16"], capsys), "vgg16", "resnet20")


def test_debug_env_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("EMQ_DEBUG", "1")
    with pytest.raises(BenchError, match="does not exist"):
        main(["bench", "info", str(tmp_path / "missing.sqlite")])


def test_module_entry_point_error_has_no_traceback(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"not a database at all\n" * 100)
    proc = run_module("bench", "info", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("emq: error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
