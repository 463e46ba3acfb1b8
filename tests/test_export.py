"""Exported proxies: standalone module equals the engine; JSON validated; emq score."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from benchmark.data import calibration_batch
from benchmark.models import MODELS
from emq.export import export_proxy
from emq.genome import UnknownNameError, from_string
from emq.graph import canonical, score_table
from emq.proxy import load_proxy_document
from emq.scorers import resolve_scorer
from primitives.inputs import InputSettings, compute_inputs, load_inputs

GENOMES = [
    "mul(softmax(abslog(mul(V, b))), sqrt(relu(mul(W, b))))",
    "revert(abs(sum(mul(Ga, D))))",
    "matmul(normalize(E), Wq)",
    "div(l1_norm(E), add(frobenius_norm(W), max_abs(A)))",
    "sub(min_max_normalize(exp2(b)), logsoftmax(tanh(mul(G, E))))",
]


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    model = MODELS["resnet20"]().eval()
    x, y = calibration_batch(16, 0)
    return compute_inputs(model, x, y, InputSettings(hutchinson_samples=2))


def _import(path):
    spec = importlib.util.spec_from_file_location(path.stem + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text", GENOMES)
def test_exported_module_equals_engine_exactly(tmp_path, inputs, text):
    expr = canonical(from_string(text))
    paths = export_proxy(expr, tmp_path, "p")
    source = paths["py"].read_text()
    assert "import emq" not in source and "from emq" not in source
    assert "primitives" not in source.split('"""', 2)[2]  # no import of this project
    module = _import(paths["py"])
    table = module.score_table(inputs.tensors, len(inputs.candidates))
    np.testing.assert_array_equal(table, score_table(expr, inputs))
    configs = np.array([[2] * 20, [8] * 20, [4, 3] * 10])
    expected = module.score_configs(table, np.searchsorted([2, 3, 4, 8], configs))
    np.testing.assert_array_equal(module.score_bits(table, configs, [2, 3, 4, 8]), expected)
    assert resolve_scorer(str(paths["json"])).formula == module.FORMULA


def test_json_is_validated_against_the_registry(tmp_path):
    expr = canonical(from_string(GENOMES[0]))
    doc = json.loads(export_proxy(expr, tmp_path, "p")["json"].read_text())
    with pytest.raises(UnknownNameError, match="os.system"):
        load_proxy_document({**doc, "genome": ["os.system", "W"]})
    with pytest.raises(ValueError, match="prefix"):
        load_proxy_document({**doc, "genome": ["W", "mul", "b"]})
    with pytest.raises(ValueError, match="not an EMQ proxy"):
        load_proxy_document({"genome": doc["genome"]})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_scorer(str(bad))
    with pytest.raises(ValueError, match="neither a file nor a baseline"):
        resolve_scorer("no_such_proxy")
    assert resolve_scorer("hawq_v3").name == "hawq_v3"


USER_MODEL = """
import torch.nn as nn


def make():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 28 * 28, 10),
    )
"""


def _score(args, tmp_path, capsys, monkeypatch):
    """``emq score ARGS`` in this process: (exit code, stdout, stderr). The user's model
    module is imported from ``tmp_path`` (as from PYTHONPATH); the cache is private."""
    from emq.cli import main

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    code = main(["score", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_a_model_outside_the_zoo(tmp_path, capsys, monkeypatch):
    (tmp_path / "usermodel.py").write_text(USER_MODEL)
    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location("usermodel", tmp_path / "usermodel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.make().state_dict(), tmp_path / "user.pt")
    expr = canonical(from_string("revert(frobenius_norm(E))"))
    proxy = export_proxy(expr, tmp_path, "p")["json"]
    args = ["--proxy", str(proxy), "--model", "usermodel:make", "--checkpoint",
            str(tmp_path / "user.pt"), "--configs", "2,8;8,8;8,2", "--json",
            "--batch", "128"]  # one chunk: its inputs are cached  # fmt: skip
    code, out, err = _score(args, tmp_path, capsys, monkeypatch)
    monkeypatch.delitem(sys.modules, "usermodel", raising=False)
    assert code == 0, err
    scores = [r["score"] for r in json.loads(out)["scores"]]
    assert scores[1] > scores[0] and scores[1] > scores[2]  # less error, higher score
    # Only the proxy's own input was computed and cached (no Hessian, no gradients).
    cached = list((tmp_path / "cache").rglob("*.f64"))
    assert len(cached) == 1
    assert {name for t in load_inputs(cached[0]).tensors for name in t} == {"E"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet20", "--configs", "2,3,4"], "has 3 bit-widths but the model has 20"),
        (["--model", "resnet20", "--configs", ",".join(["5"] * 20)], "not among the candidates"),
        (["--model", "nosuchmodule:make", "--configs", "2"], "cannot import module"),
        (["--model", "resnet20", "--checkpoint", "CKPT", "--configs", "2"], "does not fit"),
    ],
)
def test_score_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch, args, message):
    torch.save(MODELS["mobilenetv2"]().state_dict(), tmp_path / "mbv2.pt")
    args = [str(tmp_path / "mbv2.pt") if a == "CKPT" else a for a in args]
    code, _, err = _score(["--proxy", "bparams", *args], tmp_path, capsys, monkeypatch)
    assert code == 2
    assert err.startswith("emq: error:") and message in err
    assert len(err.strip().splitlines()) == 1
