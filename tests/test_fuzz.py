"""Property-based fuzzing of the command line's refusals (Hypothesis).

Every case hands ``emq.cli.main`` (in-process) one bad input - an option value, an inline
configuration or config file, a proxy JSON, a run folder's ``campaign.json`` /
``checkpoint.json`` / ``best.json``, a ``--init`` seed file, a quantizer groups file, or a
bench file - made by corrupting the shipped files in a fresh temporary folder, and asserts
the contract: exit status 2, exactly one ``emq: error:`` line on stderr (nothing on
stdout), and no file in the folder created, changed or removed. Refusals happen before any
heavy work, so the ~1,300 cases run in well under a minute (``derandomize=True``: the same
cases on every run).

    python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.bench import Bench
from emq.cli import main
from emq.commands.common import campaign_settings
from emq.evolve import campaign_identity

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "runs" / "reference"
DEFAULT_PROXY = ROOT / "emq" / "default_proxy.json"
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def fuzz(examples: int) -> settings:
    """The suite's settings (reproducible: ``derandomize``) with ``examples`` cases."""
    return settings(FUZZ, max_examples=examples)


class ReachedHeavyWork(AssertionError):
    """A case got past validation into real work: it was not refused (and not cheap)."""


@pytest.fixture(autouse=True)
def no_debug_no_work(monkeypatch):
    """No EMQ_DEBUG; and the entry points of heavy work raise, so a case that is not
    refused fails at once instead of evolving, measuring or scoring."""
    monkeypatch.delenv("EMQ_DEBUG", raising=False)

    def heavy(*args, **kwargs):
        raise ReachedHeavyWork

    for target in ("emq.transfer.bench_campaign", "emq.transfer.run_transfer",
                   "emq.context.bench_evaluator", "emq.score.model_context",
                   "emq.commands.allocate.build_problem", "emq.commands.allocate.run_compare",
                   "benchmark.bench._build_locked", "emq.export.export_proxy"):  # fmt: skip
        monkeypatch.setattr(target, heavy)


# --------------------------------------------------------------------------- the contract


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
        for p in sorted(folder.rglob("*"))
    }


def assert_refused(argv: list[str], folder: Path) -> str:
    """``main(argv)`` exits 2 with one ``emq: error:`` line and leaves ``folder`` as it was."""
    before = _snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help and friends; a refusal returns 2
            code = exc.code
    text = err.getvalue()
    assert code == 2, f"{argv}: exit {code}, stderr {text!r}"
    assert text.startswith("emq: error: ") and text.count("\n") == 1, f"{argv}: {text!r}"
    assert text.endswith("\n") and "Traceback" not in text
    assert out.getvalue() == "", f"{argv}: stdout {out.getvalue()[:200]!r}"
    assert _snapshot(folder) == before, f"{argv} changed files in {folder}"
    return text


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="emq-fuzz-") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------- bad JSON values

# Any JSON value, small.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)  # fmt: skip
# Whole-file corruptions: not JSON, deep, huge constants, binary, empty.
bad_file_texts = st.one_of(
    st.sampled_from(["", "{", "[1,", "nul", "NaN", "{'a': 1}", "\x00\xff", "[]", "0", "null",
                     '"text"', "true", "[[[[[[[[[[]]]]]]]]]]", "1e999"]),
    st.integers(33, 6000).map(lambda n: "[" * n + "]" * n),
    st.integers(33, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.binary(min_size=1, max_size=64).filter(lambda b: b[:1] not in (b"{", b"[")),
)  # fmt: skip


def _write(path: Path, content: object) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


def _set(doc: dict, path: tuple, value: object) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
NAN = object()  # written as the bare NaN token, which JSON does not have


def _dump(doc: object) -> str:
    return json.dumps(doc).replace('"__NaN__"', "NaN")


def _with_nan(value: object) -> object:
    return "__NaN__" if value is NAN else value


# --------------------------------------------------------------------------- option values

not_finite = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity", "", "x", "1e", "0x10"])


def _num(x: float | int) -> str:
    return repr(x)


# (argv prefix, option, strategy of bad values)
ALLOCATE = ["allocate", "--model", "resnet20", "--method", "ilp"]
ALLOC = [*ALLOCATE, "--budget-bops", "0.5"]


def _repeated(values: st.SearchStrategy) -> st.SearchStrategy:
    """Comma-separated lists with their first item repeated at the end."""
    return st.lists(values, min_size=1, max_size=4).map(lambda v: ",".join(map(str, v + v[:1])))


OPTION_CASES = [
    (ALLOCATE, "--budget-bops", st.one_of(not_finite, st.floats(max_value=0).map(_num),
                                          st.floats(min_value=4.0001, max_value=1e300).map(_num))),
    (ALLOCATE, "--accuracy-target", st.one_of(not_finite, st.floats(max_value=-1e-9).map(_num),
                                              st.floats(min_value=100.001).map(_num))),
    (ALLOC, "--bits", st.one_of(
        _repeated(st.integers(2, 16)),
        st.lists(st.integers(-5, 1) | st.integers(17, 99), min_size=1, max_size=4).map(
            lambda b: ",".join(map(str, b))),
        st.sampled_from(["", ",", "4,,8", "4.0,8", "four"]))),
    (ALLOC, "--lam", st.one_of(not_finite, st.floats(max_value=-1e-9).map(_num))),
    (ALLOC, "--beta", st.one_of(not_finite, st.floats(min_value=1.0001).map(_num))),
    (ALLOC, "--xi", st.one_of(not_finite, st.floats(max_value=0).map(_num))),
    (ALLOC, "--permutations", st.integers(max_value=0).map(str)),
    (ALLOC, "--seed", st.one_of(
        st.integers(max_value=-1).map(str), st.integers(min_value=2**32).map(str),
        st.floats(allow_nan=True).map(_num))),
    (["allocate", "--compare", "--model", "resnet20"], "--budgets", st.one_of(
        st.lists(st.floats(min_value=4.0001, max_value=1e9), min_size=1, max_size=3).map(
            lambda b: ",".join(map(repr, b))), not_finite)),
    (["bench", "build", "--model", "resnet20", "--out", "b.sqlite"], "--configs", st.one_of(
        st.integers(max_value=-1).map(str), st.integers(min_value=10**6 + 1).map(str),
        st.sampled_from(["1e22", "1.5", "ten", ""]))),
    (["bench", "build", "--model", "vgg", "--out", "b.sqlite", "--configs", "1"], "--act-bits",
     st.one_of(st.integers(max_value=1).map(str), st.integers(min_value=17).map(str))),
    (["bench", "build", "--model", "vgg", "--out", "b.sqlite", "--configs", "1"], "--jobs",
     st.integers(max_value=0).map(str)),
    (["evolve", "--bench", "b.sqlite"], "--population", st.one_of(
        st.integers(max_value=3).map(str), st.sampled_from(["4.5", "many"]))),
    (["evolve", "--bench", "b.sqlite"], "--steps", st.integers(max_value=-1).map(str)),
    (["evolve", "--bench", "b.sqlite"], "--offspring", st.integers(max_value=0).map(str)),
    (["ablate"], "--seeds", st.one_of(
        _repeated(st.integers(0, 9)),
        st.sampled_from(["-1", "0,one", "", "1.5"]))),
    (["score", "--model", "resnet20", "--configs", "4"], "--batch", st.one_of(
        st.integers(max_value=0).map(str), st.integers(min_value=60_001).map(str))),
    (["score", "--model", "resnet20", "--configs", "4"], "--adaround-lr", st.one_of(
        not_finite, st.floats(max_value=0).map(_num))),
    (["train", "--model", "resnet20"], "--epochs", st.integers(max_value=0).map(str)),
    (["transfer"], "--population", st.integers(max_value=3).map(str)),
]  # fmt: skip


@fuzz(400)
@given(data=st.data())
def test_bad_option_values_are_refused_by_the_parser(data):
    prefix, option, values = data.draw(st.sampled_from(OPTION_CASES))
    value = data.draw(values)
    with workdir() as tmp:
        argv = [a if a != "b.sqlite" else str(tmp / "b.sqlite") for a in prefix]
        text = assert_refused([*argv, f"{option}={value}"], tmp)
    assert option in text


# --------------------------------------------------------------------------- configurations

VGG_LAYERS = 8
bad_rows = st.one_of(
    st.lists(st.sampled_from([2, 3, 4, 8]), min_size=1, max_size=12).filter(
        lambda r: len(r) != VGG_LAYERS),  # wrong length
    st.lists(st.sampled_from([2, 3, 4, 8]), min_size=VGG_LAYERS - 1, max_size=VGG_LAYERS - 1).map(
        lambda r: [*r, 5]),  # a bit outside the candidates
    st.lists(st.integers(-(10**30), 10**30), min_size=VGG_LAYERS, max_size=VGG_LAYERS).filter(
        lambda r: not set(r) <= {2, 3, 4, 8}),
)  # fmt: skip


@fuzz(120)
@given(
    rows=st.lists(bad_rows, min_size=1, max_size=3),
    good=st.integers(0, 8),
    form=st.sampled_from(["inline", "lines", "json"]),
)
def test_bad_configurations_are_refused(rows, good, form):
    rows = [[4] * VGG_LAYERS] * good + rows  # valid rows first: the bad one is found anyway
    with workdir() as tmp:
        if form == "inline":
            spec = ";".join(",".join(map(str, r)) for r in rows)
        else:
            spec = str(tmp / "configs.txt")
            text = (json.dumps(rows) if form == "json"
                    else "\n".join(",".join(map(str, r)) for r in rows))  # fmt: skip
            Path(spec).write_text(text)
        assert_refused(["score", "--model", "vgg", f"--configs={spec}"], tmp)


config_files = st.one_of(
    st.sampled_from(["[", "[1,", "[]", "[[]]", "[[NaN]]", "[[1e999]]", '["x"]', "[{}]",
                     "[[4,4,4,4,4,4,4,4.5]]", "[[4,4,4,4,4,4,4,true]]"]),
    st.integers(33, 6000).map(lambda n: "[" * n + "]" * n),
    json_values.map(lambda v: json.dumps([v])),  # never 8 candidate bits
)  # fmt: skip


@fuzz(60)
@given(content=config_files)
def test_bad_config_files_are_refused(content):
    with workdir() as tmp:
        path = tmp / "configs.json"
        path.write_text(content)
        assert_refused(["score", "--model", "vgg", f"--configs={path}"], tmp)


# --------------------------------------------------------------------------- proxy JSON

PROXY = json.loads(DEFAULT_PROXY.read_text())
bad_genomes = st.one_of(
    st.integers(3000, 5000).map(lambda n: ["abs"] * n + ["W"]),  # deep
    st.lists(st.sampled_from(["abs", "mul", "W", "E"]), min_size=1, max_size=12).filter(
        lambda g: not _valid_prefix(g)),  # not a prefix expression
    st.lists(st.text(max_size=6).map(lambda t: "zz" + t), min_size=1, max_size=4),  # unknown
    json_values.filter(lambda v: not isinstance(v, list) or not v
                       or not all(isinstance(n, str) for n in v)),
)  # fmt: skip


def _valid_prefix(names: list[str]) -> bool:
    arity = {"abs": 1, "mul": 2, "W": 0, "E": 0}
    slots = 1
    for i, n in enumerate(names):
        if slots == 0:
            return False
        slots += arity[n] - 1
        if slots == 0 and i != len(names) - 1:
            return False
    return slots == 0


bad_proxies = st.one_of(
    bad_genomes.map(lambda g: _set(PROXY, ("genome",), g)),
    st.sampled_from(["format", "format_version", "genome"]).map(
        lambda k: _set(PROXY, (k,), _DELETE)),
    json_values.filter(lambda v: v != "emq-proxy").map(lambda v: _set(PROXY, ("format",), v)),
    json_values.filter(lambda v: v != 1 or isinstance(v, bool)).map(
        lambda v: _set(PROXY, ("format_version",), v)),
    st.sampled_from(["name", "formula"]).map(lambda k: _set(PROXY, (k,), [1, 2])),
    json_values.filter(lambda v: v not in ("table", "joint")).map(
        lambda v: _set(PROXY, ("combine",), v)),
    json_values.filter(
        lambda v: isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1
    ).map(lambda v: _set(PROXY, ("cross",), v)),
    st.just(_set(PROXY, ("genome",), ["sq_norm", "Dz"])),  # joint needs revert(sq_norm(X))
    st.just(_dump(_set(PROXY, ("fitness",), "__NaN__"))),
    bad_file_texts,
)  # fmt: skip


@fuzz(200)
@given(doc=bad_proxies)
def test_bad_proxy_files_are_refused(doc):
    with workdir() as tmp:
        path = tmp / "proxy.json"
        _write(path, doc)
        assert_refused(
            ["score", "--proxy", str(path), "--model", "resnet20", "--configs", "4"], tmp
        )


# --------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def fuzz_bench(vgg_bench_copy) -> Path:
    return vgg_bench_copy


@pytest.fixture(scope="module")
def run_files(fuzz_bench) -> dict:
    """A valid run folder's campaign.json and checkpoint.json for ``emq evolve --bench``."""
    settings_ = campaign_settings()
    ident = campaign_identity(settings_, Bench.open(fuzz_bench))
    campaign = {**ident, "bench": str(fuzz_bench), "version": "0.1.0"}
    checkpoint = json.loads((REFERENCE / "checkpoint.json").read_text())
    # Smaller (a 10-step checkpoint with a small screening cache), so each case is cheap.
    checkpoint["step"], checkpoint["history"] = 10, checkpoint["history"][:11]
    for key in ("cache", "fingerprints"):
        items = list(checkpoint["screener"][key].items())[:40]
        checkpoint["screener"][key] = dict(items)
    return {"campaign.json": campaign, "checkpoint.json": checkpoint}


def test_the_uncorrupted_run_folder_is_accepted(run_files, fuzz_bench, tmp_path):
    from emq.evolve import check_run_folder

    for name, doc in run_files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    ident = campaign_identity(campaign_settings(), Bench.open(fuzz_bench))
    assert check_run_folder(tmp_path, ident, campaign_settings()) is True


GENOME = "mul(W, b)"
CHECKPOINT_CORRUPTIONS = {
    ("step",): ["ten", -5, 1.5, None, [], True, 10**12, NAN],
    ("evaluations",): [-1, "x", 1.5, None, NAN],
    ("eval_seconds",): [-1, "x", None, 1e300, NAN],
    ("rng",): [[], "x", [3, [1] * 10, None], [2, [0] * 625, None], None],
    ("population",): [[], "x", [{}], None, 5, [{"genome": GENOME}] * 3],
    ("population", 0, "fitness"): [NAN, 99, -2, "0.5", None, [0.5]],
    ("population", 1, "genome"): [5, None, "nonsense(W)", "mul(W)", "abs(" * 300 + "W" + ")" * 300],
    ("population", 2, "formula"): [[], "W W", ""],
    ("hall_of_fame",): ["x", None, {"a": 1}],
    ("hall_of_fame", 0, "step"): [_DELETE, -1, "x"],
    ("hall_of_fame", 0, "fitness"): [NAN, 1.5],
    ("screener",): [None, [], "x"],
    ("screener", "counts"): [{"generated": -1}, {"x": "y"}, None],
    ("screener", "cache"): [{"k": {"status": "ok"}}, {"k": {"status": "ok", "fitness": 7}}, []],
    ("osp",): [None, [], {"tried": {}}],
    ("osp", "tried"): [{"abs": "many"}, {"abs": -3}],
    ("history",): ["x", [], None, [{}]],
    ("history", -1, "step"): [9, "x"],
    ("history", 0, "best"): [NAN, 3],
}
CAMPAIGN_CORRUPTIONS = {
    ("settings",): [None, [], "x", 5, {}],
    ("settings", "population"): ["x", 2, 4.5, None, NAN, True],
    ("settings", "seed"): [-1, "0", 1.5],
    ("settings", "mode"): ["fast", None],
    ("settings", "osp"): ["yes", 1],
    ("settings", "unknown_setting"): [1],
    ("bench_fingerprint",): [None, [], "x", {}],
    ("bench_fingerprint", "model"): ["resnet20", 5],
    ("bench_fingerprint", "candidates"): [[2, 2], [2, 3, 4], ["2"], []],
    ("bench_fingerprint", "schema_version"): [True, "1", 2],
}


def _corruption(table: dict) -> st.SearchStrategy:
    return st.sampled_from([(path, value) for path, values in table.items() for value in values])


@fuzz(250)
@given(
    which=st.sampled_from(["checkpoint.json", "campaign.json"]),
    field=st.data(),
    whole=st.one_of(st.none(), bad_file_texts, st.sampled_from(["<dir>", "<list>", "<number>"])),
)
def test_bad_run_folders_are_refused(run_files, fuzz_bench, which, field, whole):
    with workdir() as tmp:
        run = tmp / "run"
        run.mkdir()
        for name, doc in run_files.items():
            (run / name).write_text(json.dumps(doc))
        target = run / which
        if whole is None:
            table = CHECKPOINT_CORRUPTIONS if which == "checkpoint.json" else CAMPAIGN_CORRUPTIONS
            path, value = field.draw(_corruption(table))
            target.write_text(_dump(_set(run_files[which], path, _with_nan(value))))
        elif whole == "<dir>":
            target.unlink()
            target.mkdir()
        elif whole in ("<list>", "<number>"):
            target.write_text("[1, 2]" if whole == "<list>" else "42")
        else:
            _write(target, whole)
        argv = ["evolve", "--bench", str(fuzz_bench), "--run", str(run), "--steps", "1"]
        assert_refused(argv, tmp)


BEST = json.loads((REFERENCE / "best.json").read_text())
BEST_CORRUPTIONS = {
    ("fitness_search",): [NAN, 99, "0.8", None],
    ("heldout",): ["x", [1], {"spearman@topk": 7}, {"kendall": "x"}, {"kendall": "__NaN__"}],
    ("genome_names",): [[], "W", ["nonsense"], ["mul", "W"], ["abs"] * 4000 + ["W"], None],
    ("bench_fingerprint",): [None, "x", {"model": "resnet20"}],
    ("bench_fingerprint", "candidates"): ["x", [1, 1], [99]],
}


@fuzz(80)
@given(corruption=_corruption(BEST_CORRUPTIONS), command=st.sampled_from(["export", "score"]))
def test_bad_best_json_is_refused(corruption, command):
    path, value = corruption
    with workdir() as tmp:
        run = tmp / "run"
        run.mkdir()
        (run / "best.json").write_text(_dump(_set(BEST, path, _with_nan(value))))
        if command == "export":
            argv = ["export", str(run)]
        else:
            argv = ["score", "--proxy", str(run), "--model", "resnet20", "--configs", "4"]
        assert_refused(argv, tmp)


# --------------------------------------------------------------------------- seeds, groups

bad_formulas = st.one_of(
    st.sampled_from(["nonsense(W)", "mul(W)", "W W", "abs(", "mul(W, b))", "$", "W,"]),
    st.integers(100, 3000).map(lambda n: "abs(" * n + "W" + ")" * n),
    st.text(alphabet="()W,ab ", min_size=1, max_size=20).filter(lambda t: t.strip() not in
                                                                  ("W", "b", "a")),
)  # fmt: skip


@fuzz(80)
@given(formula=bad_formulas, good=st.integers(0, 3))
def test_bad_seed_files_are_refused(formula, good):
    from emq.genome import from_string

    formula = formula.strip()  # as the file is read: one formula per line, stripped
    if not formula:
        return
    try:
        from_string(formula)
    except ValueError:
        pass
    else:  # the generator made a valid genome by chance: not a bad input
        return
    with workdir() as tmp:
        path = tmp / "seeds.txt"
        path.write_text("# seeds\n" + "revert(sq_norm(E))\n" * good + formula + "\n")
        assert_refused(["evolve", "--init", str(path), "--run", str(tmp / "run")], tmp)


GROUPS = {"groups": [{"layers": ["conv1", "layers.0.conv1"], "candidates": ["W4A8", "W8A8"]}]}
GROUPS_CORRUPTIONS = {
    ("groups",): [None, "x", {}, 5],
    ("groups", 0): [None, [], "conv1", {"candidates": ["W4A8"]}, {"layers": [], "x": 1}],
    ("groups", 0, "layers"): [[], "conv1", [1, 2], None],
    ("groups", 0, "candidates"): [[], "W4A8", ["W4"], ["w4a8x"], [[4]], [[4, 8, 8]], [None]],
    ("groups", 0, "layer"): [["conv1"]],
    ("default_candidates",): [[], "W4A8", [[1.5, 8]]],
    ("extra",): [1],
}


@fuzz(80)
@given(corruption=st.one_of(_corruption(GROUPS_CORRUPTIONS), bad_file_texts.map(lambda t: ("", t))))
def test_bad_groups_files_are_refused(corruption):
    path, value = corruption
    with workdir() as tmp:
        groups = tmp / "groups.json"
        if path == "":
            _write(groups, value)
        else:
            _write(groups, _set(GROUPS, path, value))
        argv = [*ALLOCATE, "--budget-bops", "0.5", "--groups", str(groups)]
        assert_refused(argv + ["--out", str(tmp / "out")], tmp)


# --------------------------------------------------------------------------- bench files

out_of_range = ["'NaN'", "-1", "-0.5", "1e999", "-1e999", "'x'", "NULL", "x'00ff'"]
bad_meta = [
    "'true'", "'\"1\"'", "'[2, 2]'", "'[]'", "'[1, 99]'", "'\"x\"'", "'null'", "'NaN'",
    "'[{\"name\": \"x\"}]'", "'150'", "'-3'", "'[' || '1'", "x'00ff'", "'{\"a\": 1}'",
]  # fmt: skip
# (statement, values for {v}): every combination is an invalid bench file
BENCH_CORRUPTIONS = [
    ("UPDATE results SET top1 = {v} WHERE idx = {i}", [*out_of_range, "100.5"]),
    ("UPDATE results SET loss = {v} WHERE idx = {i}", out_of_range),
    ("UPDATE results SET bops = {v} WHERE idx = {i}", out_of_range),
    ("UPDATE results SET idx = {v} WHERE idx = {i}", ["-1", "'x'", "1.5"]),
    ("UPDATE meta SET value = {v} WHERE key = 'schema_version'", [*bad_meta, "'2'", "'1.0'"]),
    ("UPDATE meta SET value = {v} WHERE key = 'candidates'", [*bad_meta, "'[2, 3]'"]),
    ("UPDATE meta SET value = {v} WHERE key = 'act_bits'", [*bad_meta, "'2'", "'4'"]),
    ("UPDATE meta SET value = {v} WHERE key = 'layers'", [*bad_meta, "'[]'"]),
    ("UPDATE meta SET value = {v} WHERE key = 'fp_top1'", [*out_of_range, "'150'", "'\"90\"'"]),
    ("UPDATE meta SET value = {v} WHERE key = 'quantizer'", bad_meta),
    ("UPDATE meta SET value = {v} WHERE key = 'model'", ["'5'", "'null'", "'\"\"'", "'[]'"]),
    ("DELETE FROM meta WHERE key = {v}", ["'schema_version'", "'model'", "'candidates'",
                                          "'act_bits'", "'layers'", "'quantizer'"]),
    ("UPDATE results SET config = replace(config, '|', ',4|') WHERE idx = {i}", [""]),
    ("UPDATE results SET config = '5' || substr(config, 2) WHERE idx = {i}", [""]),
    ("UPDATE results SET config = substr(config, 3) WHERE idx = {i}", [""]),
    ("UPDATE results SET config = replace(config, '|8', '|4') WHERE idx = {i}", [""]),
    ("UPDATE results SET config = {v} WHERE idx = {i}", ["''", "'4,4'", "'x|y'", "5", "NULL"]),
    # the same configuration twice, under another key text ('04,...')
    ("UPDATE results SET config = (SELECT '0' || config FROM results WHERE idx = 0) "
     "WHERE idx = {d}", [""]),
    ("DELETE FROM results", [""]),
]  # fmt: skip


@fuzz(250)
@given(
    case=st.sampled_from(BENCH_CORRUPTIONS).flatmap(
        lambda c: st.tuples(st.just(c[0]), st.sampled_from(c[1]))
    ),
    row=st.integers(0, 11),
    command=st.sampled_from(["info", "evolve"]),
)
def test_bad_bench_files_are_refused(fuzz_bench, case, row, command):
    sql, value = case
    statement = sql.format(v=value, i=row, d=1 + row % 11)
    with workdir() as tmp:
        path = tmp / "bench.sqlite"
        shutil.copy(fuzz_bench, path)
        con = sqlite3.connect(path)
        try:
            with con:
                con.execute(statement)
        except sqlite3.IntegrityError:  # NOT NULL / PRIMARY KEY: the file cannot hold it
            return
        finally:
            con.close()
        if command == "info":
            argv = ["bench", "info", str(path)]
        else:
            argv = ["evolve", "--bench", str(path), "--run", str(tmp / "run"), "--steps", "1"]
        assert_refused(argv, tmp)
