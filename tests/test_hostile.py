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
from cli_checks import refused

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


# =========================================================================== second sweep
# Environment (EMQ_DATA, EMQ_CACHE, cache files), evolve / bench / baselines / score inputs.

VGG_CONFIG = ",".join("4" * 8)


def _idx(array) -> bytes:
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    head = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.tobytes()


def _data(folder: Path, n_train: int = 64, n_test: int = 64, **override: bytes) -> Path:
    """A small Fashion-MNIST-like IDX folder (zero images, labels 0..9); ``override`` maps
    ``train_images`` etc. to raw file bytes."""
    import numpy as np

    folder.mkdir()
    files = {
        "train_images": _idx(np.zeros((n_train, 28, 28))),
        "train_labels": _idx(np.arange(n_train) % 10),
        "test_images": _idx(np.zeros((n_test, 28, 28))),
        "test_labels": _idx(np.arange(n_test) % 10),
    }
    names = {"train_images": "train-images-idx3-ubyte",
             "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte",
             "test_labels": "t10k-labels-idx1-ubyte"}  # fmt: skip
    for key, raw in {**files, **override}.items():
        (folder / names[key]).write_bytes(raw)
    return folder


@pytest.mark.parametrize("override, needles", [
    ({"train_images": bytes([0, 0, 8, 255]) + bytes(64)}, ["promises 255 dimensions"]),
    ({"train_images": _idx([0] * (64 * 784))}, ["shape [50176], not 28x28 images"]),
    ({"train_images": _idx([[[0] * 32] * 32] * 64)}, ["shape [64, 32, 32]"]),
    ({"train_labels": _idx([200] * 64)}, ["holds label 200", "0 to 9"]),
    ({"train_labels": _idx([[1, 2]] * 64)}, ["shape [64, 2], not one label per image"]),
    ({"train_labels": _idx([1] * 63)}, ["holds 64 images but", "63 labels"]),
])  # fmt: skip
def test_emq_data_files_of_the_wrong_content_are_refused(tmp_path, monkeypatch, capsys,
                                                        override, needles):  # fmt: skip
    # was: a traceback (IndexError "Target 200 is out of bounds" from cross_entropy), a numpy
    # "offset must be non-negative" message, or a model shape error about (128, 1, 32, 32)
    monkeypatch.setenv("EMQ_DATA", str(_data(tmp_path / "data", **override)))
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "cache"))
    refused(["score", "--model", "vgg", "--configs", VGG_CONFIG], capsys, *needles,
            "EMQ_DATA", folder=tmp_path)  # fmt: skip


def test_bench_build_on_a_short_test_split_is_refused(tmp_path, monkeypatch, capsys):
    # was: exit 0, a bench whose meta says test_images 10000 (or the --test-images asked)
    # while every row was measured on the 50 images the folder holds
    monkeypatch.setenv("EMQ_DATA", str(_data(tmp_path / "data", n_test=50)))
    out = tmp_path / "b.sqlite"
    argv = ["bench", "build", "--model", "vgg", "--configs", "0", "--seed", "0", "--out", str(out)]
    refused(argv, capsys, "--test-images 10000", "holds only 50 images", folder=tmp_path)
    refused([*argv, "--test-images", "51"], capsys, "pass --test-images 50 or less",
            folder=tmp_path)  # fmt: skip


def test_a_calibration_batch_larger_than_the_data_names_the_folder(tmp_path, monkeypatch):
    from benchmark.data import calibration_batch

    monkeypatch.setenv("EMQ_DATA", str(_data(tmp_path / "data", n_train=20)))
    with pytest.raises(ValueError, match=r"got 128 \(the training split in .*data holds 20"):
        calibration_batch(128)


@pytest.mark.parametrize("cache", ["afile", "afile/sub"])
def test_emq_cache_under_a_file_is_refused_naming_emq_cache(tmp_path, monkeypatch, capsys,
                                                           cache):  # fmt: skip
    # was: "emq: error: Not a directory: .../afile/inputs" (neither EMQ_CACHE nor the fix)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / cache))
    # --batch 128: one chunk, whose inputs are cached (chunked batches cache none)
    refused(["score", "--model", "vgg", "--configs", VGG_CONFIG, "--batch", "128"], capsys,
            "(EMQ_CACHE) cannot be made", "afile is a file", "set EMQ_CACHE to a writable "
            "folder", folder=tmp_path)  # fmt: skip


def test_an_inputs_cache_file_missing_an_input_is_refused(tmp_path, vgg_bench_copy):
    # was: exit 0: a cache file whose header lost one tensor (here D of the first layer)
    # made every genome reading it fail, counted invalid, silently
    from benchmark.bench import Bench
    from emq.context import bench_inputs

    bench = Bench.open(vgg_bench_copy)
    inputs = bench_inputs(bench, 8, names=("W", "D"), cache=tmp_path)
    raw = inputs.path.read_bytes()
    needle = b'"layer": 0, "name": "D"'
    assert raw.count(needle) == 1
    inputs.path.write_bytes(raw.replace(needle, b'"layer": 0, "name": "Q"'))
    with pytest.raises(ValueError, match=r"has no input D for layer features.0.0; delete it"):
        bench_inputs(bench, 8, names=("W", "D"), cache=tmp_path)


def test_corrupt_allocator_cache_entries_are_recomputed_not_used(tmp_path):
    # was: a traceback ("table": 5), an opaque scipy error (NaN in the table), or
    # "could not convert string to float" - a stale cache must never decide an allocation
    import numpy as np

    from emq.allocate.sensitivity import _JsonCache

    path = tmp_path / "c.json"
    path.write_text('{"table": 5, "t2": [[1, NaN]], "t3": [[1, 2]], "a": NaN, "b": "x", '
                    '"c": true, "d": 0.25}')  # fmt: skip
    store = _JsonCache(path)
    assert store.table("table", 2, 1) is None and store.table("t2", 2, 1) is None
    assert store.table("t3", 2, 2) is None and store.table("t3", 3, 1) is None
    assert np.array_equal(store.table("t3", 2, 1), [[1.0, 2.0]])
    assert [store.number(k) for k in "abcd"] == [None, None, None, 0.25]


@pytest.mark.parametrize("entries, needle", [
    (5, "'entries' is not a list"),
    ([{"layer": 3, "bits": 2, "shape": [2], "stats": {}}], "for layer 3"),
    ([{"layer": 0, "bits": 2, "shape": [3], "stats": {}}], "a mask of shape [3] for layer 0"),
    (["x"], "corrupt"),
])  # fmt: skip
def test_corrupt_adaround_cache_files_are_refused(tmp_path, monkeypatch, entries, needle):
    # was: a traceback (TypeError), or masks of another shape stitched onto a layer
    import numpy as np

    from benchmark.adaround import RoundingCache

    monkeypatch.setenv("EMQ_CACHE", str(tmp_path))
    (tmp_path / "adaround").mkdir()
    meta = json.dumps({"key": "k", "entries": entries})
    np.savez(tmp_path / "adaround" / "adaround-k.npz", meta=np.array(meta),
             l0_b2=np.packbits(np.ones(2, dtype=bool)))  # fmt: skip
    with pytest.raises(ValueError, match="AdaRound cache .* is corrupt") as info:
        RoundingCache("k", shapes=[(2,)])
    assert needle in str(info.value)


# --------------------------------------------------------------------------- evolve inputs


@pytest.mark.parametrize("extra, seeds, needles", [
    (["--inputs", "D,A,D"], None, ["--inputs D,A,D: D given twice"]),
    ([], "", ["holds no formula", "--init none"]),
    ([], "# only a comment\n\n", ["holds no formula"]),
    ([], "revert(sq_norm(D))\nsq_norm(H)\r\n", ["formula 2 'sq_norm(H)' uses H, outside --inputs",
                                                "add the input to --inputs"]),
    (["--inputs", "W,D"], "sq_norm(A)\n", ["uses A, outside --inputs W,D"]),
    (["--jobs", "100000"], None, ["--jobs", "4 per CPU core"]),
])  # fmt: skip
def test_evolve_inputs_and_seed_files_are_checked(tmp_path, vgg_bench_copy, capsys, extra,
                                                 seeds, needles):  # fmt: skip
    # was: duplicates accepted (weighting an input twice), an empty seed file read as
    # "random genomes only", a seed outside --inputs refused without the file's name
    argv = ["evolve", "--bench", str(vgg_bench_copy), "--run", str(tmp_path / "run"),
            "--steps", "1", "--population", "8", *extra]  # fmt: skip
    if seeds is not None:
        (tmp_path / "seeds.txt").write_text(seeds)
        argv += ["--init", str(tmp_path / "seeds.txt")]
    refused(argv, capsys, *needles, folder=tmp_path)


def test_transfer_refuses_duplicate_inputs(tmp_path, capsys):
    refused(["transfer", "--models", "vgg,resnext", "--inputs", "E,E", "--out",
             str(tmp_path / "t")], capsys, "E given twice", folder=tmp_path)  # fmt: skip


def _bench_rows(tmp_path: Path, source: Path, rows: int | None = None, top1=None) -> Path:
    path = tmp_path / "bench.sqlite"
    shutil.copy(source, path)
    con = sqlite3.connect(path)
    with con:
        if rows is not None:
            con.execute("DELETE FROM results WHERE idx >= ?", (rows,))
        if top1 is not None:
            con.execute("UPDATE results SET top1 = ?", (top1,))
    con.close()
    return path


def test_evolve_on_a_bench_too_small_to_rank_is_refused(tmp_path, vgg_bench_copy, capsys):
    # was: exit 0 and "search fitness 1.0000" on a 4-row bench (--configs 0, or one still
    # being built): a Spearman of 3 search and 1 held-out configurations
    bench = _bench_rows(tmp_path, vgg_bench_copy, rows=4)
    refused(["evolve", "--bench", str(bench), "--run", str(tmp_path / "run"), "--steps", "1",
             "--population", "8"], capsys, "holds 4 configurations, 3 to search on and 1 "
            "held out: too few to rank", folder=tmp_path)  # fmt: skip


def test_baselines_and_score_refuse_splits_nothing_can_rank(tmp_path, vgg_bench_copy, capsys):
    # was: exit 0 with a table of NaN correlations (1 held-out row, or every top-1 equal)
    small = _bench_rows(tmp_path, vgg_bench_copy, rows=4)
    out = tmp_path / "out"
    refused(["baselines", "--bench", str(small), "--only", "bparams", "--out", str(out)],
            capsys, "--split heldout", "holds 1 configuration(s)", "use --split all",
            folder=tmp_path)  # fmt: skip
    small.unlink()
    flat = _bench_rows(tmp_path, vgg_bench_copy, top1=50.0)
    refused(["baselines", "--bench", str(flat), "--only", "bparams", "--split", "all", "--out",
             str(out)], capsys, "same top-1 (50 %)", folder=tmp_path)  # fmt: skip
    refused(["score", "--model", "vgg", "--bench", str(flat)], capsys, "same top-1 (50 %)",
            folder=tmp_path)  # fmt: skip
