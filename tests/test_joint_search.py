"""Campaigns that search configuration-level terms: ``--combine auto`` scores a genome
``revert(sq_norm(X))`` jointly too and keeps the better fitness; ``--dz-images`` lets ``Dz``
read more images than the other inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from benchmark.bench import Bench, default_bench
from benchmark.data import calibration_batch
from benchmark.models import load_model
from emq.cli import main
from emq.context import bench_evaluator, bench_inputs
from emq.evolve import DZ_PER_CALIB, INPUTS_WITHOUT_DZ, CampaignSettings, campaign_identity
from emq.fitness import AGGREGATES, MultiEvaluator, joint_candidate
from emq.genome import from_string
from emq.graph import DEFAULT_CROSS, canonical, joint_scores
from emq.scorers import resolve_scorer
from emq.transfer import bench_campaign
from primitives.inputs import InputSettings, compute_inputs

CALIB, DZ_IMAGES = 32, 64
NAMES = ("Ga", "D", "E", "b", "Dz")
FISHER = "revert(sq_norm(Dz))"
EMPIRICAL = "revert(sq_norm(sample_sum(mul(Ga, D))))"


def expr(text: str):
    return canonical(from_string(text))


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One inputs cache for the module: the campaign reads the evaluators' inputs."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EMQ_CACHE", str(tmp_path_factory.mktemp("joint-search-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def r20(resnet20_bench):
    return resnet20_bench


@pytest.fixture(scope="module")
def vgg():
    return Bench.open(default_bench("vgg"))


@pytest.fixture(scope="module")
def evaluators(r20, vgg):
    """ResNet-20 and VGG evaluators with ``combine`` 'auto', ``Dz`` on 64 images."""
    return [
        bench_evaluator(b, CALIB, names=NAMES, dz_images=DZ_IMAGES, combine="auto")
        for b in (r20, vgg)
    ]


def test_dz_reads_more_images_than_the_other_inputs(r20, evaluators):
    inputs = evaluators[0].inputs
    assert inputs.tensors[0]["Dz"].shape[1] == DZ_IMAGES
    assert inputs.tensors[0]["D"].shape[1] == CALIB
    # The same values as Dz computed on the 64-image batch at once (each image's own).
    x, _ = calibration_batch(DZ_IMAGES, 0)
    model = load_model("resnet20")
    whole = compute_inputs(model, x, None, InputSettings(candidates=r20.candidates, names=("Dz",)))
    for mine, ref in zip(inputs.tensors, whole.tensors, strict=True):
        torch.testing.assert_close(mine["Dz"], ref["Dz"].double(), rtol=0, atol=0)
    # A separate cache entry from the 32-image Dz.
    fewer = bench_inputs(r20, CALIB, names=NAMES)
    assert fewer.tensors[0]["Dz"].shape[1] == CALIB and fewer.path != inputs.path
    with pytest.raises(ValueError, match="must start with the calibration batch"):
        compute_inputs(model, x[1:33], None, InputSettings(names=("Dz",)), dz_x=x)


def test_which_genomes_can_be_combined_jointly(evaluators):
    shapes = evaluators[0].shapes()
    assert joint_candidate(expr(FISHER), shapes)
    assert joint_candidate(expr(EMPIRICAL), shapes)  # one loss change per image
    assert not joint_candidate(expr("revert(sq_norm(D))"), shapes)  # shapes differ by layer
    assert not joint_candidate(expr("sq_norm(Dz)"), shapes)  # not revert(sq_norm(X))
    assert not joint_candidate(expr("revert(sq_norm(sample_sum(Ga)))"), shapes)  # no bits
    table_only = replace(evaluators[0], combine="table")
    assert not table_only.joint(expr(FISHER)) and evaluators[0].joint(expr(FISHER))


def test_auto_keeps_the_better_combination_and_says_which(evaluators):
    ev = evaluators[0]
    for text in (FISHER, EMPIRICAL):
        e = expr(text)
        res = ev.evaluate(e)
        table = replace(ev, combine="table").evaluate(e)
        joint = ev.fitness_of_scores(joint_scores(e, ev.inputs, ev.bit_index))
        assert "fitness_joint" not in table and table["combine"] == "table"
        assert res["fitness_table"] == table["fitness"] and res["fitness_joint"] == joint
        assert res["fitness"] == max(table["fitness"], joint)
        assert res["combine"] == ("joint" if joint > table["fitness"] else "table")
        assert res["fingerprint"] != table["fingerprint"]  # of both rankings
    res = ev.evaluate(expr("revert(sq_norm(D))"))  # not joint-able: the table alone
    assert res["combine"] == "table" and "fitness_joint" not in res


def test_several_benches_choose_one_combination_for_all(evaluators):
    multi = MultiEvaluator(evaluators, "mean-std")
    for text in (FISHER, EMPIRICAL):
        e = expr(text)
        parts = [p.evaluate(e) for p in evaluators]
        table = AGGREGATES["mean-std"]([p["fitness_table"] for p in parts])
        joint = AGGREGATES["mean-std"]([p["fitness_joint"] for p in parts])
        res = multi.evaluate(e)
        assert res["fitness"] == round(max(table, joint), 6)
        assert res["combine"] == ("joint" if round(joint, 6) > round(table, 6) else "table")
        chosen = "fitness_joint" if res["combine"] == "joint" else "fitness_table"
        assert res["fitness_per_bench"] == [p[chosen] for p in parts]
        # Pruning bounds both combinations: a floor above the better one prunes, one
        # below the worse one does not.
        assert multi.evaluate(e, floor=res["fitness"] + 0.3)["status"] == "pruned"
        assert multi.evaluate(e, floor=min(table, joint) - 0.5)["status"] == "ok"


def test_a_campaign_records_exports_and_reports_the_joint_combination(tmp_path, r20, vgg):
    settings = CampaignSettings(
        population=4, offspring=2, seed=0, calib_images=CALIB, inputs=NAMES, init=(FISHER,),
        combine="auto", dz_images=DZ_IMAGES,
    )  # fmt: skip
    run = tmp_path / "run"
    campaign = bench_campaign(run, [r20], settings, heldout=[vgg], progress=False)
    summary = campaign.run_steps(1)
    # The run folder's campaign.json (with combine and dz_images) is read back on resume.
    again = bench_campaign(run, [r20], settings, heldout=[vgg], progress=False).run_steps(1)
    assert again["formula"] == summary["formula"] and again["combine"] == summary["combine"]
    best = json.loads((run / "best.json").read_text())
    ev = campaign.evaluator
    e = expr(summary["formula"])
    assert best["combine"] == summary["combine"] == ev.evaluate(e)["combine"]
    proxy = json.loads((run / "best_proxy.json").read_text())
    assert proxy["combine"] == best["combine"]
    assert resolve_scorer(str(run)).combine == best["combine"]
    if best["combine"] == "joint":
        assert "def joint_scores" in (run / "best_proxy.py").read_text()
        # with the campaign's cross-layer weight (the default 0.75), in every file
        assert best["cross"] == proxy["cross"] == settings.cross == DEFAULT_CROSS
        assert resolve_scorer(str(run)).cross == DEFAULT_CROSS
    # The held-out model is scored with the same combination, on all its configurations.
    (row,) = summary["heldout_models"]
    direct = bench_evaluator(vgg, CALIB, names=NAMES, dz_images=DZ_IMAGES, cross=settings.cross)
    assert row["spearman@topk"] == pytest.approx(
        direct.report(e, "all", best["combine"])["spearman@topk"]
    )


def test_settings_and_run_folders_of_the_new_fields(r20, tmp_path, capsys):
    default = CampaignSettings()
    assert default.combine == "auto" and "Dz" in default.inputs
    assert default.dz_images == DZ_PER_CALIB * default.calib_images == 512
    assert CampaignSettings(calib_images=32).dz_images == 128
    ident = campaign_identity(default, r20)["settings"]
    assert ident["combine"] == "auto" and ident["dz_images"] == 512
    # A folder of the campaigns before (no Dz, the table) keeps its identity: it resumes.
    earlier = CampaignSettings(inputs=INPUTS_WITHOUT_DZ, combine="table", dz_images=None)
    legacy = campaign_identity(earlier, r20)["settings"]
    assert "combine" not in legacy and "dz_images" not in legacy
    dz_unused = replace(earlier, dz_images=512)  # Dz's images matter only with Dz
    assert "dz_images" not in campaign_identity(dz_unused, r20)["settings"]
    with pytest.raises(ValueError, match="--dz-images 16 is below --calib-images 32"):
        CampaignSettings(calib_images=32, dz_images=16)
    with pytest.raises(ValueError, match="unknown --combine 'sum'"):
        CampaignSettings(combine="sum")
    # The cross-layer weight: recorded at 0.75; the joint campaigns before it (1) resume;
    # a table campaign does not depend on it.
    assert default.cross == DEFAULT_CROSS and ident["cross"] == DEFAULT_CROSS
    assert "cross" not in campaign_identity(replace(default, cross=1.0), r20)["settings"]
    assert "cross" not in campaign_identity(replace(earlier, cross=0.5), r20)["settings"]
    with pytest.raises(ValueError, match=r"cross-layer weight must be in \[0, 1\]"):
        CampaignSettings(cross=-0.1)
    code = main(["evolve", "--models", "resnet20", "--run", str(tmp_path / "y"), "--steps", "0",
                 "--cross", "1.5"])  # fmt: skip
    assert code == 2 and "--cross" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    code = main(["evolve", "--models", "resnet20", "--run", str(tmp_path / "x"), "--steps", "0",
                 "--calib-images", "32", "--dz-images", "16"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "emq: error:" in err and "--dz-images 16 is below --calib-images 32" in err
    assert not (tmp_path / "x").exists()
