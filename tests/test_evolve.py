"""Campaigns on the shipped ResNet-20 bench: reproducible, resumable, safe run folders."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from benchmark.bench import default_bench
from emq.context import campaign_evaluator
from emq.evolve import INPUTS_BEFORE_DZ, Campaign, CampaignSettings, task_batches
from emq.seeds import LITERATURE, fitting
from primitives.inputs import INPUT_NAMES

CALIB = 32  # calibration images (campaigns default to 128); as conftest.CALIB
SETTINGS = CampaignSettings(population=8, offspring=4, seed=3, calib_images=CALIB)


@pytest.fixture(scope="module")
def cache_dir(inputs_cache):
    return inputs_cache


@pytest.fixture(scope="module")
def bench(resnet20_bench):
    return resnet20_bench


def _evaluator(bench, cache):
    """The evaluator a campaign of ``SETTINGS`` builds (its inputs, Dz images, combine)."""
    return campaign_evaluator(bench, SETTINGS, cache=cache)


@pytest.fixture(scope="module")
def evaluator(bench, cache_dir):
    return _evaluator(bench, cache_dir)


def _run(path, bench, evaluator, steps, settings=SETTINGS, jobs=1):
    return Campaign(path, bench, evaluator, settings, jobs=jobs, progress=False).run_steps(steps)


def _state(path):
    ck = json.loads((path / "checkpoint.json").read_text())
    return ck["population"], [h["best"] for h in ck["history"]], ck["hall_of_fame"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bench, evaluator):
    path = tmp_path_factory.mktemp("runs") / "ref"
    summary = _run(path, bench, evaluator, 3)
    return path, summary


def test_run_folder_has_every_artefact(reference):
    path, summary = reference
    for name in ("campaign.json", "checkpoint.json", "log.csv", "best.json", "fitness.png",
                 "heldout_scatter.png", "best_proxy.py", "best_proxy.json"):  # fmt: skip
        assert (path / name).is_file(), name
    rows = (path / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header, initial population, 3 steps
    assert summary["step"] == 3
    held = summary["heldout"]
    assert -1.0 <= held["spearman@topk"] <= 1.0
    assert summary["formula"] == json.loads((path / "best.json").read_text())["formula"]


def test_fitness_is_finite_and_valid(reference):
    population, best, hof = _state(reference[0])
    assert len(population) == SETTINGS.population
    assert all(math.isfinite(p["fitness"]) and -1.0 < p["fitness"] <= 1.0 for p in population)
    assert best == sorted(best)  # steady state keeps the best: never decreases
    assert hof[0]["fitness"] == max(p["fitness"] for p in population)


def test_same_seed_same_result(tmp_path, bench, evaluator, reference):
    _run(tmp_path / "again", bench, evaluator, 3)
    assert _state(tmp_path / "again") == _state(reference[0])


def test_other_seed_other_result(tmp_path, bench, evaluator, reference):
    other = replace(SETTINGS, seed=4)
    _run(tmp_path / "other", bench, evaluator, 3, other)
    assert _state(tmp_path / "other")[0] != _state(reference[0])[0]


def test_resume_continues_where_it_stopped(tmp_path, bench, evaluator, reference):
    _run(tmp_path / "r", bench, evaluator, 1)
    assert json.loads((tmp_path / "r" / "checkpoint.json").read_text())["step"] == 1
    _run(tmp_path / "r", bench, evaluator, 3)  # a new Campaign object, as after a restart
    assert _state(tmp_path / "r") == _state(reference[0])


def test_parallel_jobs_give_the_same_result(tmp_path, bench, evaluator, reference):
    _run(tmp_path / "par", bench, evaluator, 3, jobs=2)
    assert _state(tmp_path / "par") == _state(reference[0])


def test_a_parallel_run_evaluates_its_first_genome_here_before_any_task(
    tmp_path, bench, evaluator, monkeypatch
):
    """Start-up: the first genome of an invocation is evaluated in this process (its first
    result does not wait for the workers' imports), the rest of that round by the workers,
    and the campaign is the one-process campaign."""
    here, rounds = [], []
    evaluate, screen = type(evaluator).evaluate, Campaign._evaluate

    def spy_evaluate(self, expr, *args, **kwargs):
        here.append(expr)
        return evaluate(self, expr, *args, **kwargs)

    def spy_rounds(self, exprs, *args, **kwargs):
        rounds.append(list(exprs))
        return screen(self, exprs, *args, **kwargs)

    monkeypatch.setattr(type(evaluator), "evaluate", spy_evaluate)
    monkeypatch.setattr(Campaign, "_evaluate", spy_rounds)
    _run(tmp_path / "par", bench, evaluator, 0, jobs=2)
    assert len(rounds[0]) > 2
    assert here[0] == rounds[0][0]
    assert not set(map(str, rounds[0][1:])) & set(map(str, here))  # the others: workers
    _run(tmp_path / "one", bench, evaluator, 0)
    assert _state(tmp_path / "par") == _state(tmp_path / "one")


def test_tasks_are_about_two_batches_per_worker_in_order():
    texts = [f"g{i}" for i in range(9)]
    for workers in (1, 2, 3, 8):
        batches = task_batches(texts, workers)
        assert [t for b in batches for t in b] == texts
        assert len(batches) == min(len(texts), 2 * workers)
        assert max(map(len, batches)) - min(map(len, batches)) <= 1
    assert task_batches(texts, 2) == [texts[0:3], texts[3:5], texts[5:7], texts[7:9]]
    assert task_batches(["a"], 4) == [["a"]]
    # start-up: each worker's first task is one genome, then the batches as usual
    assert task_batches(texts, 2, first=True) == [["g0"], ["g1"], *task_batches(texts[2:], 2)]
    assert task_batches(["a"], 4, first=True) == [["a"]]


def test_a_truncated_inputs_file_stops_a_parallel_campaign_and_it_resumes(
    tmp_path, bench, evaluator, reference
):
    """Workers refuse the cut file (one clear error), no step is recorded from it, and after
    the file is recomputed the campaign resumes to the uninterrupted result."""
    cache = tmp_path / "cache"
    cache.mkdir()
    src = Path(evaluator.inputs_path)
    shutil.copyfile(src, cache / src.name)
    ev = _evaluator(bench, cache)
    assert ev.inputs_path == str(cache / src.name)
    run = tmp_path / "run"
    _run(run, bench, ev, 1, jobs=2)
    cut = tmp_path / "cut"
    cut.write_bytes((cache / src.name).read_bytes()[:-4096])
    os.replace(cut, cache / src.name)  # a new file: the main process keeps its old mapping
    with pytest.raises(ValueError, match="corrupt.*truncated.*delete it"):
        _run(run, bench, ev, 3, jobs=2)
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 1
    (cache / src.name).unlink()  # what the error says
    _run(run, bench, _evaluator(bench, cache), 3, jobs=2)
    assert _state(run) == _state(reference[0])


def test_killed_cli_run_resumes_to_the_same_result(tmp_path, cache_dir, reference):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "emq.cli", "evolve", "--run", str(run), "--steps", "3",
           "--population", "8", "--offspring", "4", "--seed", "3", "--models", "resnet20",
           "--heldout", "none", "--calib-images", str(CALIB)]  # fmt: skip
    env = {**os.environ, "EMQ_CACHE": str(cache_dir)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = run / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ck.exists() and json.loads(ck.read_text())["step"] >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _state(run) == _state(reference[0])


def test_run_folder_of_other_settings_is_refused(tmp_path, bench, evaluator, reference):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference[0], copy)
    before = (copy / "checkpoint.json").read_bytes()
    other = replace(SETTINGS, seed=99)
    with pytest.raises(ValueError, match="different settings.*seed"):
        _run(copy, bench, evaluator, 3, other)
    assert (copy / "checkpoint.json").read_bytes() == before


def test_run_folder_evolved_on_older_inputs_is_refused(tmp_path, bench, evaluator, reference):
    """A campaign.json without ``inputs_version`` was evolved on the float32 inputs."""
    import shutil

    copy = tmp_path / "old-inputs"
    shutil.copytree(reference[0], copy)
    meta = json.loads((copy / "campaign.json").read_text())
    assert meta.pop("inputs_version") == 3
    (copy / "campaign.json").write_text(json.dumps(meta))
    before = (copy / "checkpoint.json").read_bytes()
    with pytest.raises(ValueError, match="inputs of cache version 2 or older.*use another --run"):
        _run(copy, bench, evaluator, 3)
    assert (copy / "checkpoint.json").read_bytes() == before


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, bench, evaluator, reference):
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(reference[0], copy)
    (copy / "checkpoint.json").write_text('{"step": 2, "population": [')
    with pytest.raises(ValueError, match="checkpoint .*checkpoint.json is not valid JSON"):
        _run(copy, bench, evaluator, 4)


def test_foreign_folder_is_never_overwritten(tmp_path, bench, evaluator):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a campaign folder"):
        _run(folder, bench, evaluator, 1)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from emq.cli import main

    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all")
    code = main(["evolve", "--bench", str(bad), "--run", str(tmp_path / "r"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("emq: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert main(["evolve", "--bench", str(tmp_path / "missing.sqlite"), "--steps", "1"]) == 2


def test_search_restricted_to_some_inputs(tmp_path, bench, evaluator):
    from emq.graph import leaves

    allowed = ("W", "Ga", "E", "D")
    settings = CampaignSettings(population=8, offspring=4, seed=5, inputs=allowed,
                                calib_images=CALIB)  # fmt: skip
    _run(tmp_path / "run", bench, evaluator, 2, settings)
    ck = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    used = set()
    for rec in ck["population"]:
        from emq.genome import from_string
        from emq.graph import canonical

        used |= leaves(canonical(from_string(rec["genome"])))
    assert used and used <= set(allowed)
    campaign = json.loads((tmp_path / "run" / "campaign.json").read_text())
    assert campaign["settings"]["inputs"] == list(allowed)
    # Every input and no seeds (the settings before --inputs/--init existed), the table
    # combination and Dz on the calibration images (before --combine/--dz-images) are left
    # out of the identity, so older run folders still resume; today's defaults are
    # recorded. Every input then was every input but Dz (added later).
    legacy = replace(SETTINGS, inputs=INPUTS_BEFORE_DZ, init=(), combine="table", dz_images=None)
    ident = Campaign(tmp_path / "x", bench, evaluator, legacy).identity()["settings"]
    assert not {"inputs", "init", "combine", "dz_images"} & set(ident)
    ident = Campaign(tmp_path / "y", bench, evaluator, SETTINGS).identity()["settings"]
    assert "H" not in ident["inputs"] and "Dz" in ident["inputs"]
    assert ident["combine"] == "auto" and ident["dz_images"] == 4 * SETTINGS.calib_images
    assert tuple(ident["init"]) == fitting(LITERATURE, ident["inputs"])


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        (("A", "W"), "must include one of D,Dz,E,Wq,b"),
        (("E", "Q"), "unknown or empty"),
        ((), "unknown"),
    ],
)
def test_bad_input_restriction_is_a_clear_error(inputs, needle):
    with pytest.raises(ValueError, match=needle):
        CampaignSettings(inputs=inputs)


def test_sampler_draws_only_allowed_terminals():
    import random

    from emq.osp import OperationSampler

    sampler = OperationSampler(terminals=("E", "H"))
    rng = random.Random(0)
    assert {sampler.terminal(rng) for _ in range(200)} == {"E", "H"}


def test_cli_refuses_the_same_bench_twice(tmp_path, capsys, monkeypatch):
    from emq.cli import main

    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    path = str(default_bench("resnet20"))
    code = main(["evolve", "--bench", path, "--bench", path, "--run", str(tmp_path / "r"),
                 "--steps", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "the same --bench is given twice" in err
    assert not (tmp_path / "r").exists()


def test_multi_bench_campaign_records_every_bench(tmp_path, bench, evaluator, reference):
    from emq.fitness import MultiEvaluator

    multi = MultiEvaluator([evaluator, evaluator])
    summary = Campaign(tmp_path / "m", bench, multi, SETTINGS, progress=False,
                       extra_benches=(bench,)).run_steps(1)  # fmt: skip
    ident = json.loads((tmp_path / "m" / "campaign.json").read_text())
    assert ident["extra_bench_fingerprints"] == [bench.fingerprint]
    assert len(summary["per_bench"]) == 2
    assert summary["per_bench"][0]["heldout"] == summary["heldout"]
    # A single-bench campaign may not resume this folder.
    with pytest.raises(ValueError, match="extra_bench_fingerprints"):
        _run(tmp_path / "m", bench, evaluator, 2)
    # The aggregate is part of the identity (recorded only when not the mean, which older
    # folders implicitly had).
    assert ident["settings"]["bench_agg"] == "mean-std" == CampaignSettings().bench_agg
    Campaign(tmp_path / "avg", bench, MultiEvaluator([evaluator, evaluator], "mean"),
             replace(SETTINGS, bench_agg="mean"), progress=False,
             extra_benches=(bench,)).run_steps(0)  # fmt: skip
    old = json.loads((tmp_path / "avg" / "campaign.json").read_text())
    assert "bench_agg" not in old["settings"]
    # One bench has nothing to aggregate: its identity leaves the aggregate out, so single-
    # bench folders written under another default still resume.
    single = json.loads((reference[0] / "campaign.json").read_text())
    assert "bench_agg" not in single["settings"]
    assert _run(reference[0], bench, evaluator, 3, replace(SETTINGS, bench_agg="min"))
    worst = replace(SETTINGS, bench_agg="min")
    with pytest.raises(ValueError, match="bench_agg"):
        Campaign(tmp_path / "m", bench, MultiEvaluator([evaluator, evaluator], "min"), worst,
                 progress=False, extra_benches=(bench,)).run_steps(2)  # fmt: skip
    with pytest.raises(ValueError, match="expected one of mean, median, min, mean-std"):
        CampaignSettings(bench_agg="max")


def test_seed_formulas_enter_the_initial_population(tmp_path, bench, resnet20_evaluator):
    from emq.genome import from_string
    from emq.graph import canonical, expr_str

    seeds = ("revert(sum(abs(mul(Ga, D))))", "revert(mul(to_mean_scalar(H), sq_norm(E)))")
    settings = replace(SETTINGS, init=seeds, inputs=INPUT_NAMES, combine="table")
    _run(tmp_path / "s", bench, resnet20_evaluator, 0, settings)  # every input, H's too
    ck = json.loads((tmp_path / "s" / "checkpoint.json").read_text())
    formulas = {rec["formula"] for rec in ck["population"]}
    assert {expr_str(canonical(from_string(t))) for t in seeds} <= formulas
    assert json.loads((tmp_path / "s" / "campaign.json").read_text())["settings"]["init"] == list(
        seeds
    )


@pytest.mark.parametrize(
    ("init", "needle"),
    [(("mul(E, Q)",), "Q"), (("revert(sq_norm(D))",), "uses D, outside --inputs")],
)
def test_bad_seed_formulas_are_clear_errors(init, needle):
    with pytest.raises(ValueError, match=needle):
        CampaignSettings(init=init, inputs=("W", "E", "Wq"))


def test_cli_init_file(tmp_path, capsys, monkeypatch):
    from emq.cli import main

    monkeypatch.delenv("EMQ_DEBUG", raising=False)
    code = main(["evolve", "--init", str(tmp_path / "none.txt"), "--run", str(tmp_path / "r")])
    assert code == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_literature_seeds_parse_and_are_valid_on_the_bench(resnet20_evaluator):
    """Every literature seed, H's included (an evaluator of every input)."""
    from emq.genome import from_string
    from emq.graph import canonical
    from emq.seeds import LITERATURE, load_seeds

    assert load_seeds("literature") == LITERATURE and load_seeds("none") == ()
    for text in LITERATURE:
        assert resnet20_evaluator.evaluate(canonical(from_string(text)))["status"] == "ok", text
    # A built-in set keeps the seeds that fit --inputs; the default campaign starts from them.
    no_h = load_seeds("literature", ("A", "W", "V", "Ga", "E", "D", "b"))
    assert 0 < len(no_h) < len(LITERATURE) and not any("H" in t for t in no_h)
    assert CampaignSettings().init == load_seeds("literature", CampaignSettings().inputs)
    assert CampaignSettings(init=()).init == ()


def test_default_campaign_cli_starts_from_the_literature_seeds(tmp_path, cache_dir, monkeypatch):
    """``emq evolve`` with no --init/--inputs: no Hessian, literature seeds first."""
    from emq.cli import main
    from emq.genome import from_string
    from emq.graph import canonical, expr_str

    monkeypatch.setenv("EMQ_CACHE", str(cache_dir))
    argv = ["evolve", "--run", str(tmp_path / "d"), "--steps", "0", "--population", "8",
            "--models", "resnet20", "--heldout", "none", "--calib-images", str(CALIB)]  # fmt: skip
    assert main(argv) == 0
    campaign = json.loads((tmp_path / "d" / "campaign.json").read_text())["settings"]
    assert "H" not in campaign["inputs"] and campaign["init"] == list(CampaignSettings().init)
    ck = json.loads((tmp_path / "d" / "checkpoint.json").read_text())
    seeded = {expr_str(canonical(from_string(t))) for t in campaign["init"]}
    assert seeded <= {rec["formula"] for rec in ck["population"]}
    assert main([*argv[:2], str(tmp_path / "n"), *argv[3:], "--init", "none"]) == 0
    assert "init" not in json.loads((tmp_path / "n" / "campaign.json").read_text())["settings"]


def test_seed_file_skips_comments(tmp_path):
    from emq.seeds import load_seeds

    path = tmp_path / "seeds.txt"
    path.write_text("# a comment\n\nrevert(sq_norm(D))\n  E  \n")
    assert load_seeds(str(path)) == ("revert(sq_norm(D))", "E")
