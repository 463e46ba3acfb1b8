"""Tests for ``emq allocate`` (emq.commands.allocate / problem / compare) on a tiny user model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emq.cli import main

MODEL = "allocate_tiny:tiny_net"
BASE = ["allocate", "--model", MODEL]


pytestmark = pytest.mark.usefixtures("allocate_env")  # conftest: private cache, one thread


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, needle: str) -> None:
    assert code == 2
    assert err.startswith("emq: error:") and needle in err
    assert len(err.strip().splitlines()) == 1


def test_sqnr_budget_writes_and_prints_the_allocation(capsys, tmp_path):
    argv = [*BASE, "--method", "sqnr", "--scorer", "sqnr-measured", "--budget-bops", "0.5",
            "--verify", "0", "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["relative_bops"] <= 0.5 and len(doc["w_bits"]) == 3
    assert doc["a_bits"] == [8, 8, 8] and 0.0 <= doc["test_top1"] <= 100.0
    assert doc["evaluations"] == 12  # phase 1: 3 layers x 4 candidates, no phase-2 evaluation
    assert json.loads(open(doc["path"]).read())["w_bits"] == doc["w_bits"]
    code, out, _ = run(argv, capsys)  # phase 1 comes from the cache now
    assert code == 0 and json.loads(out)["evaluations"] == 0
    assert json.loads(out)["w_bits"] == doc["w_bits"]


def test_text_output_and_smpq(capsys, tmp_path):
    argv = [*BASE, "--method", "smpq", "--scorer", "bops", "--budget-bops", "0.4",
            "--out", str(tmp_path)]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "relative BOPs" in out and "test top-1" in out and "W" in out.splitlines()[1]


def test_ilp_is_never_more_sensitive_than_the_greedy_front(capsys, tmp_path):
    argv = [*BASE, "--method", "ilp", "--scorer", "sqnr-measured", "--budget-bops", "0.45",
            "--verify", "0", "--out", str(tmp_path), "--json"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    ilp = json.loads(out)
    assert ilp["method"] == "ilp" and ilp["relative_bops"] <= 0.45 and ilp["evaluations"] == 12
    code, out, _ = run([*argv[:4], "sqnr", *argv[5:]], capsys)  # same phase 1, from the cache
    greedy = json.loads(out)
    sens = json.loads(next((tmp_path / "cache" / "allocate").glob("*.json")).read_text())

    def total(doc: dict) -> float:
        return sum(sens[f"{g}|W{w}A8"] for g, w in enumerate(doc["w_bits"]))

    assert ilp["details"]["total_sensitivity"] == pytest.approx(total(ilp))
    assert total(ilp) <= total(greedy) + 1e-12


def test_accuracy_target_reports_evaluations(capsys, tmp_path):
    argv = [*BASE, "--method", "sqnr", "--scorer", "sqnr-measured", "--accuracy-target", "0",
            "--search", "binary", "--out", str(tmp_path), "--json"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["w_bits"] == [2, 2, 2]  # every point meets 0 %: the last point of the front
    assert doc["details"]["phase2_evaluations"] >= 1


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--method", "sqnr", "--scorer", "sqnr-measured", "--budget-bops", "0.1"],
         "below the lowest candidates"),
        (["--method", "sqnr", "--scorer", "sqnr-measured", "--accuracy-target", "99.99"],
         "above the full-precision accuracy"),
        (["--method", "sqnr", "--scorer", "sqnr-measured", "--accuracy-target", "101"],
         "--accuracy-target '101': expected a percentage in [0, 100]"),
        (["--method", "smpq", "--scorer", "bops", "--accuracy-target", "5"], "SMPQ allocator"),
        (["--method", "ilp", "--scorer", "bops", "--accuracy-target", "5"], "ILP allocator needs"),
        (["--method", "sqnr", "--scorer", "no_such_proxy", "--budget-bops", "0.5"],
         "neither a file nor a baseline"),
        (["--method", "sqnr", "--scorer", "bops"], "give a budget"),
        (["--method", "sqnr", "--scorer", "bops", "--budget-bops", "0.5", "--bits", "4,eight"],
         "--bits '4,eight'"),
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_error(extra, needle, capsys):
    code, _, err = run([*BASE, *extra], capsys)
    assert_user_error(code, err, needle)


@pytest.mark.parametrize(
    ("groups", "needle"),
    [
        ({"groups": [{"layers": ["conv_x"], "candidates": ["W4A8"]}]}, "unknown layer"),
        ({"groups": [{"layers": ["7"], "candidates": ["W4A8", "W0A8"]}]}, "unsupported"),
    ],
)
def test_bad_group_file_is_a_one_line_error(groups, needle, capsys, tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(groups))
    argv = [*BASE, "--method", "sqnr", "--scorer", "sqnr-measured", "--budget-bops", "0.5",
            "--groups", str(path)]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert_user_error(code, err, needle)


def test_group_file_with_wider_activations(capsys, tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"groups": [{"layers": ["0", "3"],
                                            "candidates": ["W8A16", "W4A8"]}]}))  # fmt: skip
    argv = [*BASE, "--method", "sqnr", "--scorer", "sqnr-measured", "--budget-bops", "1.2",
            "--groups", str(path), "--out", str(tmp_path), "--json"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["relative_bops"] <= 1.2
    assert doc["w_bits"][0] == doc["w_bits"][1] and doc["a_bits"][0] == doc["a_bits"][1]


def test_compare_without_a_proxy_says_so(capsys, tmp_path):
    argv = [*BASE, "--compare", "--proxy", str(tmp_path / "best_proxy.json")]
    code, _, err = run(argv, capsys)
    assert_user_error(code, err, "not found")


def test_smpq_on_measured_validation_accuracy(capsys, tmp_path):
    argv = [*BASE, "--method", "smpq", "--scorer", "sqnr-measured", "--smpq-value", "accuracy",
            "--permutations", "2", "--budget-bops", "0.5", "--out", str(tmp_path),
            "--json"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["relative_bops"] <= 0.5 and doc["scorer"] == "accuracy"
    # no phase 1; at least the all-top and all-lowest configurations were measured
    assert doc["details"]["phase1_seconds"] == 0.0 and doc["evaluations"] >= 2


ADA = ["--rounding", "adaround", "--adaround-iterations", "100", "--adaround-images", "64"]


def test_adaround_allocation_uses_learned_rounding_in_both_phases(capsys, tmp_path):
    argv = [*BASE, "--method", "sqnr", "--scorer", "sqnr-measured", "--budget-bops", "0.5",
            "--verify", "0", "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    near = json.loads(out)
    code, out, _ = run([*argv, *ADA], capsys)
    assert code == 0
    ada = json.loads(out)
    # Phase 1 is measured again (its cache is keyed by the rounding), then reused.
    assert ada["evaluations"] == 12 and ada["relative_bops"] <= 0.5
    assert ada["test_top1"] != near["test_top1"] or ada["w_bits"] != near["w_bits"]
    code, out, _ = run([*argv, *ADA], capsys)
    assert code == 0 and json.loads(out)["evaluations"] == 0


def test_compare_rounding_table(capsys, tmp_path):
    argv = [*BASE, "--compare-rounding", "--bits", "2,8", "--budgets", "0.3,0.5",
            "--out", str(tmp_path), *ADA[2:]]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "fixed W2A8" in out and "mixed SQNR @0.3" in out and "top-1 ada" in out
    doc = json.loads((tmp_path / "rounding.json").read_text())
    rows = {(r["setting"], r["rounding"]): r for r in doc["rows"]}
    assert len(rows) == 2 * (2 + 2)
    assert rows[("fixed W8A8", "nearest")]["relative_bops"] == pytest.approx(1.0)
    for budget in (0.3, 0.5):
        for rounding in ("nearest", "adaround"):
            assert rows[(f"mixed SQNR @{budget:g}", rounding)]["relative_bops"] <= budget + 1e-9
    assert doc["adaround"]["iterations"] == 100 and doc["adaround"]["images"] == 64
    assert (tmp_path / "rounding.csv").read_text().count("\n") == 9


def test_bad_rounding_is_rejected(capsys):
    code, _, err = run([*BASE, "--method", "sqnr", "--scorer", "bops", "--budget-bops", "0.5",
                        "--rounding", "up"], capsys)  # fmt: skip
    assert_user_error(code, err, "invalid choice: 'up'")
    code, _, err = run([*BASE, "--method", "sqnr", "--scorer", "bops", "--budget-bops", "0.5",
                        *ADA[:4], "--adaround-images", "8"], capsys)  # fmt: skip
    assert_user_error(code, err, "--adaround-images")
    code, _, err = run([*BASE, "--method", "sqnr", "--scorer", "bops", "--budget-bops", "0.5",
                        *ADA, "--adaround-lr", "0"], capsys)  # fmt: skip
    assert_user_error(code, err, "--adaround-lr '0'")


def test_compare_runs_every_method_and_scorer(capsys, tmp_path):
    argv = [*BASE, "--compare", "--proxy", "bparams", "--budgets", "0.3,0.5",
            "--front-points", "2", "--out", str(tmp_path)]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0 and "budget 0.5 smpq verified: proxy" in out
    doc = json.loads((tmp_path / "compare.json").read_text())
    rows = doc["rows"]
    # uniform, then every method x scorer twice: its own answer and the verified one
    assert len(rows) == 2 * (1 + 3 * 3 * 2) and doc["rounding"] == "nearest"
    for r in rows:
        assert r["relative_bops"] <= r["budget_bops"] + 1e-9
        assert 0.0 <= r["test_top1"] <= 100.0
    # Every measured-SQNR allocation pays its phase 1 (12 SQNR passes), at every budget;
    # a verified one also pays the configurations its race measured, and takes longer.
    plain = {(r["budget"], r["method"]): r for r in rows
             if r["scorer"] == "sqnr-measured" and not r["verified"]}  # fmt: skip
    measured = [r for r in rows if r["scorer"] == "sqnr-measured" and r["verified"]]
    assert len(plain) == 6 and all(r["evaluations"] == 12 for r in plain.values())
    for r in measured:
        own = plain[(r["budget"], r["method"])]
        assert r["evaluations"] > 12 and r["validation_images"] > 0
        assert r["seconds"] > own["seconds"]
    measured = list(plain.values())
    first = min(r["seconds"] for r in measured)
    assert first > 0 and all(r["seconds"] >= 0.5 * first for r in measured)
    assert len(doc["targets"]) == 2 * 3 and (tmp_path / "compare.png").stat().st_size > 0
    assert doc["quantizer_setup_seconds"] > 0


def test_prepare_quantizes_every_layer_at_every_candidate_width():
    """``prepare()`` fills the simulator's Q_b(W) for measured phase 1 and verification."""
    from allocate_tiny import tiny_net

    from emq.allocate.problem import AllocationProblem

    problem = AllocationProblem.for_model("tiny", tiny_net(), cache=False)
    assert problem.prepare() > 0
    assert len(problem.sim._wq) == 3 * 4  # every layer at every candidate width
    table = problem.sensitivity("hawq_v3")
    assert len(table.values) == 3 and all(v[0] == 0 for v in table.values)


def test_batch_sets_the_training_free_scorers_calibration_images(capsys, tmp_path):
    """``--batch N`` (``scorer_images``): phase 1 is ``score_table`` on the first N images of
    the seeded training permutation, 128 at a time."""
    from allocate_tiny import tiny_net

    from emq.allocate.problem import SCORER_IMAGES, AllocationProblem
    from emq.allocate.result import training_subset
    from emq.allocate.sensitivity import table_sensitivity
    from emq.scorers import resolve_scorer
    from emq.scoring import SCORING_IMAGES, ScoreContext, score_table, scorer_inputs
    from primitives.inputs import InputSettings

    assert SCORER_IMAGES == SCORING_IMAGES == 512
    model, scorer = tiny_net(), resolve_scorer("default")
    settings = InputSettings(candidates=(2, 3, 4, 8), names=scorer_inputs(scorer))
    values = {}
    for n in (160, 64):
        problem = AllocationProblem.for_model("tiny", model, cache=False, scorer_images=n)
        x, y = training_subset(0, n)
        table = score_table(scorer, ScoreContext(model, x, y, settings, False))
        expected = np.concatenate(table_sensitivity(table, problem.groups, (2, 3, 4, 8)))
        values[n] = np.concatenate(problem.sensitivity("default").values)
        np.testing.assert_allclose(values[n], expected, rtol=1e-12)
    assert not np.allclose(values[160], values[64], rtol=1e-3)
    code, _, err = run([*BASE, "--method", "ilp", "--budget-bops", "0.5", "--batch", "0"], capsys)
    assert_user_error(code, err, "--batch")
