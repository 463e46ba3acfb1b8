"""Regression tests of the hostile-input sweep of the newer features: user model factories
(``--model module:factory``), ``emq train``, ``emq allocate`` outputs, ``emq export-model``
allocation files, empty option values, output folders made before a refusal. One test (or
parametrized group) per class of failure found; each refusal is one ``emq: error:`` line,
exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import torch

from benchmark.models import checkpoint_path
from emq.cli import main
from emq.commands.allocate import check_distinct_outputs
from emq.score import parse_configs

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ROOT / "benchmark" / "benches"
ALLOCATION = {
    "method": "ilp",
    "scorer": "bops",
    "model": "vgg",
    "layer_names": ["features.0.0", "features.1.0", "features.3.0", "features.4.0",
                    "features.6.0", "features.7.0", "classifier.1", "classifier.3"],
    "w_bits": [4] * 8,
    "a_bits": [8] * 8,
    "checkpoint": None,
    "rounding": "nearest",
    "adaround": None,
}  # fmt: skip

HOSTILE = """
import math
import torch
from torch import nn


def _linear(out=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, out))


class Returns(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.fc = kind, nn.Linear(784, 10)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        if self.kind == "raises":
            raise KeyError("no such key")
        return {"tuple": (y, y), "dict": {"logits": y}, "labels": y.argmax(1),
                "nan": y * math.nan}[self.kind]


def good():
    return _linear()

def returns_tuple():
    return Returns("tuple")

def returns_dict():
    return Returns("dict")

def returns_labels():
    return Returns("labels")

def returns_nan():
    return Returns("nan")

def raises_in_forward():
    return Returns("raises")

def five_classes():
    return _linear(5)

def three_channels():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))

def nan_weight():
    m = _linear()
    with torch.no_grad():
        m[1].weight[0, 0] = math.nan
    return m

def no_parameters():
    class Slice(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]
    return Slice()

def conv1d():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv1d(28, 8, 3), nn.Linear(8, 10)
        def forward(self, x):
            return self.fc(self.c(x[:, 0]).mean(2))
    return M()
"""


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("EMQ_DEBUG", raising=False)


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """``hostile_models.py`` in a folder on sys.path; yields an empty work folder."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "hostile_models.py").write_text(HOSTILE)
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.delitem(sys.modules, "hostile_models", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    return work


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refused(argv: list[str], capsys, *needles: str, folder: Path | None = None) -> str:
    """``main`` returns 2 with exactly one ``emq: error:`` line naming ``needles``, and
    leaves ``folder`` as it was."""
    before = files(folder) if folder is not None else None
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert captured.out == ""
    assert err.startswith("emq: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    if folder is not None:
        assert files(folder) == before
    return err


# --------------------------------------------------------------------------- model factories

FACTORY_CASES = [
    ("returns_tuple", ["returned tuple, not a tensor", "[N, 10]"]),
    ("returns_dict", ["returned dict, not a tensor"]),
    ("returns_labels", ["int64 tensor of shape [2]"]),
    ("returns_nan", ["NaN or infinite logits"]),
    ("five_classes", ["shape [2, 5]", "[N, 1, 28, 28]"]),
    ("three_channels", ["raised RuntimeError", "3 channels"]),
    ("nan_weight", ["tensor '1.weight' holds NaN"]),
]


@pytest.mark.parametrize("factory, needles", FACTORY_CASES)
def test_factory_models_are_checked_on_a_forward_pass(hostile, capsys, factory, needles):
    # was: a traceback (cross_entropy on a tuple, dict, labels, 4 classes) or exit 0 with
    # NaN scores (NaN weights, NaN logits)
    refused(["score", "--model", f"hostile_models:{factory}", "--configs", "4"], capsys,
            f"hostile_models:{factory}", *needles)  # fmt: skip


def test_an_exception_in_forward_names_its_type(hostile, capsys):
    # was: "emq: error: 'no such key'" (a KeyError raised by user code, unnamed)
    refused(["score", "--model", "hostile_models:raises_in_forward", "--configs", "4"], capsys,
            "forward pass on images [2, 1, 28, 28] raised KeyError: 'no such key'")  # fmt: skip


def test_a_good_factory_passes_and_the_check_leaves_the_rng_alone(hostile):
    from benchmark.factory import build_model, check_forward

    model = build_model("hostile_models:good")
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_forward(model, "hostile_models:good")
    assert torch.equal(torch.rand(3), expected)  # training's seeded draws are unchanged


@pytest.mark.parametrize("factory, needles", [
    ("returns_tuple", ["returned tuple"]),
    ("nan_weight", ["holds NaN"]),
    ("no_parameters", ["no trainable parameters"]),
    ("conv1d", ["'c' (Conv1d) cannot be quantized"]),
])  # fmt: skip
def test_train_refuses_a_bad_model_before_writing(hostile, capsys, factory, needles):
    # was: a traceback after the folder and lock were made, or a NaN checkpoint at exit 0
    out = hostile / "sub" / "net.pt"
    refused(["train", "--model", f"hostile_models:{factory}", "--epochs", "1", "--out",
             str(out)], capsys, *needles, folder=hostile)  # fmt: skip


def test_train_refuses_an_unwritable_out_before_training(hostile, capsys):
    # was: the whole training run, then IsADirectoryError / NotADirectoryError
    (hostile / "afile").write_text("x")
    (hostile / "adir").mkdir()
    argv = ["train", "--model", "hostile_models:good", "--epochs", "1"]
    refused([*argv, "--out", str(hostile / "adir")], capsys, "is a folder", folder=hostile)
    refused([*argv, "--out", str(hostile / "afile" / "x.pt")], capsys,
            "afile is a file, not a folder", folder=hostile)  # fmt: skip


def test_train_that_diverges_saves_nothing(hostile, capsys):
    # was: exit 0 with a NaN checkpoint (test_loss nan, top-1 at chance)
    out = hostile / "net.pt"
    argv = ["train", "--model", "hostile_models:good", "--epochs", "1", "--batch-size", "20000",
            "--lr", "1e30", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar's lines
    assert err.startswith("emq: error: training hostile_models:good diverged"), err
    assert "nothing was saved: lower --lr" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_zoo_checkpoint_with_nan_is_refused(tmp_path, capsys):
    # was: exit 0, every score NaN
    state = torch.load(checkpoint_path("vgg"), weights_only=True)
    state["features.0.0.weight"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    refused(["score", "--model", "vgg", "--checkpoint", str(tmp_path / "nan.pt"), "--configs",
             ",".join("4" * 8)], capsys, "nan.pt", "'features.0.0.weight' holds NaN")  # fmt: skip


@pytest.mark.parametrize("spec", ["./mynet.py:make", "mynet.py:make", "models/mynet.py:make"])
def test_a_file_path_as_model_says_how_to_name_the_module(capsys, spec):
    refused(["score", "--model", spec, "--configs", "4"], capsys,
            "not as a file path", "--model mynet:make")  # fmt: skip


# --------------------------------------------------------------------------- empty values


@pytest.mark.parametrize("argv, option", [
    (["score", "--model", "vgg", "--configs", "4", "--checkpoint", ""], "--checkpoint"),
    (["transfer", "--models", ","], "--models"),
    (["transfer", "--pool", " , "], "--pool"),
    (["baselines", "--only", ","], "--only"),
    (["bench", "info", ""], "path"),
    (["evolve", "--bench", ""], "--bench"),
    (["allocate", "--model", "vgg", "--method", "ilp", "--budget-bops", "0.5",
      "--export-onnx", ""], "--export-onnx"),
    (["allocate", "--model", "vgg", "--method", "ilp", "--budget-bops", "0.5", "--out", " "],
     "--out"),
    (["score", "--model", "", "--configs", "4"], "--model"),
])  # fmt: skip
def test_empty_option_values_are_refused(tmp_path, monkeypatch, capsys, argv, option):
    # was: the option read as not given: the shipped checkpoint, every zoo model (a whole
    # transfer study), an empty pool, no ONNX written - all at exit 0
    monkeypatch.chdir(tmp_path)
    refused(argv, capsys, f"{option} '", "expected a value", folder=tmp_path)


# --------------------------------------------------------------------------- allocate


@pytest.mark.parametrize("extra, needles", [
    (["--verify", "101"], ["--verify '101'", "from 0 to 100"]),
    (["--export-onnx", "m.x", "--encodings", "./m.x"], ["--export-onnx and --encodings are the "
                                                        "same file"]),
    (["--out", "afile"], ["--out afile: afile is a file, not a folder"]),
    (["--out", "afile/sub"], ["afile is a file, not a folder"]),
])  # fmt: skip
def test_allocate_outputs_are_checked_before_any_work(tmp_path, monkeypatch, capsys, extra,
                                                      needles):  # fmt: skip
    # was: --verify 10**9 ran for hours; one file written over the other at exit 0; a
    # "File exists" error after the whole allocation
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    argv = ["allocate", "--model", "vgg", "--method", "ilp", "--scorer", "bops",
            "--budget-bops", "0.5", "--verify", "0"]  # fmt: skip
    refused([*argv, *extra], capsys, *needles, folder=tmp_path)


def test_the_allocation_json_is_not_overwritten_by_an_export(tmp_path):
    out = tmp_path / "o"
    check_distinct_outputs({"the allocation": out / "a.json", "--export-onnx": None})
    with pytest.raises(ValueError, match="the allocation and --export-onnx are the same file"):
        check_distinct_outputs({"the allocation": out / "a.json",
                                "--export-onnx": out / ".." / "o" / "a.json"})  # fmt: skip


# --------------------------------------------------------------------------- export-model


def _deep(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


@pytest.mark.parametrize("change, needles", [
    ({"rounding": "adaround", "adaround": {"bogus": 1}}, ["'adaround'", "'bogus'"]),
    ({"rounding": "adaround", "adaround": {"iterations": "ten"}}, ["'adaround.iterations'"]),
    ({"w_bits": [4] * 7 + [4.0]}, ["'w_bits[7]' is 4.0"]),
    ({"w_bits": [1] + [4] * 7}, ["'w_bits[0]' is 1", "from 2 to 16"]),
    ({"checkpoint": ""}, ["'checkpoint'"]),
    ("deep", ["nested 5000 levels"]),
    ("\ufeffnot json", ["not valid JSON"]),
])  # fmt: skip
def test_tampered_allocation_files_are_refused(tmp_path, capsys, change, needles):
    # was: a traceback (AdaRoundSettings(**adaround)), the shipped checkpoint silently used
    # for "checkpoint": "", and "the input is nested too deeply" without the file's name
    path = tmp_path / "alloc.json"
    if change == "deep":
        path.write_text(_deep(5000))
    elif isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(json.dumps({**ALLOCATION, **change}))
    refused(["export-model", "--allocation", str(path), "--out", str(tmp_path / "m.onnx")],
            capsys, str(path), *needles, folder=tmp_path)  # fmt: skip


def test_bench_with_unknown_adaround_settings_is_refused(tmp_path, vgg_bench_copy, capsys):
    # was: a traceback from Bench.adaround in emq score --bench / emq baselines
    path = tmp_path / "b.sqlite"
    shutil.copy(vgg_bench_copy, path)
    quantizer = {"rounding": "adaround", "adaround": {"bogus": 1}}
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'quantizer'", (json.dumps(quantizer),))
    con.close()
    refused(["bench", "info", str(path)], capsys, "'quantizer.adaround'", "'bogus'")


# --------------------------------------------------------------------------- output folders


def test_refusals_after_the_output_folder_leave_no_folder(tmp_path, monkeypatch, capsys):
    # was: runs/transfer/.emq.lock, tout/.emq.lock, bout/.emq.lock left behind
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fakerun").mkdir()
    (tmp_path / "fakerun" / "checkpoint.json").write_text("{}")
    refused(["transfer", "--models", "vgg"], capsys, "at least two models", folder=tmp_path)
    refused(["transfer", "--pool", "fakerun", "--out", "tout"], capsys, "checkpoint.json",
            folder=tmp_path)  # fmt: skip
    refused(["baselines", "--bench", str(BENCHES / "vgg.sqlite"), "--checkpoint",
             str(checkpoint_path("resnet20")), "--only", "bparams", "--out", "bout"], capsys,
            "does not fit the model", folder=tmp_path)  # fmt: skip


# --------------------------------------------------------------------------- configurations


def test_config_files_with_a_byte_order_mark_are_read(tmp_path):
    for name, text in (("c.txt", "4,8\r\n8,4\r\n\r\n"), ("c.json", "[[4, 8], [8, 4]]")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Windows editors save it
        assert parse_configs(str(path), 2, (4, 8)).tolist() == [[4, 8], [8, 4]]


def test_a_missing_config_file_is_named_as_such(capsys):
    # was: "invalid literal for int() with base 10: 'configs.txt'"
    refused(["score", "--model", "vgg", "--configs", "configs.txt"], capsys,
            "'configs.txt' is neither an existing file nor inline configurations")  # fmt: skip


def test_score_with_a_bench_of_another_model_says_which(capsys):
    refused(["score", "--model", "resnet20", "--bench", str(BENCHES / "vgg.sqlite")], capsys,
            "is of model vgg (8 layers)", "--model resnet20 (20 layers)")  # fmt: skip
