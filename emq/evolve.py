"""Evolution campaigns: a steady-state (EMQ-style) or generational loop over proxy genomes.

A campaign lives in a run folder (``runs/<name>/``): ``campaign.json`` (settings, seeds,
bench fingerprint), ``checkpoint.json`` (population, RNG state, step, hall of fame, caches;
written atomically after every step), ``log.csv``, ``best.json`` and plots. Running the same
command again continues from the checkpoint; the same seed gives the same result.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from tqdm import tqdm

from benchmark.bench import Bench
from benchmark.cache import atomic_write_text
from benchmark.cluster import check_workers, package_version, pool, workers_can_read
from benchmark.lock import exclusive, is_lock_file, run_folder_lock
from emq import __version__
from emq.export import export_run
from emq.fitness import AGGREGATES, Evaluator, check_combine, evaluate_texts
from emq.genome import Genome, from_string, make_toolbox
from emq.graph import (
    DEFAULT_CROSS,
    canonical,
    check_cross,
    dag_hash,
    expr_str,
    leaves,
    ops_used,
    prefix_names,
)
from emq.osp import OperationSampler
from emq.plots import plot_campaign
from emq.schemas import CAMPAIGN_SCHEMA, CHECKPOINT_SCHEMA, read_document
from emq.screen import STAGES, VALID, Screener, validity_rate
from emq.seeds import LITERATURE, fitting
from primitives.inputs import BIT_DEPENDENT, INPUT_NAMES
from primitives.inputs import CACHE_VERSION as INPUTS_VERSION

# Every input but the Hessian: its Hutchinson estimate costs most of a proxy's inputs
# (16 Hessian-vector products; ~5 of ~6 s on ResNet-20) and the proxies evolved with it key
# on weight error and did not transfer to MobileNetV2 (README, "Transfer"). --inputs adds it.
# Dz (the true Fisher's logit changes) is a default input since the campaigns that search
# configuration-level terms (``combine``, ``dz_images``; README, "The default campaign
# searches whole configurations"); the campaigns before it searched without it.
INPUTS_BEFORE_DZ = tuple(n for n in INPUT_NAMES if n != "Dz")
DEFAULT_INPUTS = tuple(n for n in INPUT_NAMES if n != "H")
INPUTS_WITHOUT_DZ = tuple(n for n in DEFAULT_INPUTS if n != "Dz")  # the earlier default
# ``Dz`` reads this many times the calibration images by default (``dz_images``).
DZ_PER_CALIB = 4
# Settings added after the first campaigns, with the value older run folders implicitly had:
# left out of a campaign's identity when they hold it, so those folders still resume.
LEGACY_VALUES = {
    "inputs": INPUTS_BEFORE_DZ, "init": (), "bench_agg": "mean", "combine": "table",
    "dz_images": None, "cross": 1.0,
}  # fmt: skip

LOG_FIELDS = (
    "step", "evaluations", "best", "median", "validity", "unique_ratio", "evals_per_s",
    "seconds", *STAGES,
)  # fmt: skip


@dataclass(frozen=True)
class CampaignSettings:
    """Everything that defines a campaign (all recorded in ``campaign.json``)."""

    population: int = 48
    seed: int = 0
    mode: str = "steady"  # "steady" (EMQ-style) or "generational"
    offspring: int = 8  # offspring evaluated per step (steady state)
    generator: str = "tree"
    max_height: int = 8
    cxpb: float = 0.5
    mutpb: float = 0.9
    osp: bool = True
    dps: bool = True
    split_seed: int = 0
    calib_images: int = 128
    calib_seed: int = 0
    hof_size: int = 10
    inputs: tuple[str, ...] = DEFAULT_INPUTS  # proxy inputs the search may use
    # formulas placed in the initial population first (seeding); None = the literature
    # seeds that fit ``inputs`` (``emq.seeds``), () = random genomes only
    init: tuple[str, ...] | None = None
    # Several benches: how their fitness combines (fitness.AGGREGATES); chosen by
    # leave-one-architecture-out selection (``emq transfer --pool``, README).
    bench_agg: str = "mean-std"
    # How a configuration's layers combine (``emq.fitness.COMBINES``): ``auto`` also scores
    # a genome revert(sq_norm(X)) jointly and keeps the better combination (best.json's
    # ``combine``); ``table`` as every campaign before 2026-12-07.
    combine: str = "auto"
    # Images ``Dz`` reads (the first of the same seed's calibration batch): 0, the default,
    # is ``DZ_PER_CALIB`` x ``calib_images`` (512 for 128); None, as many as the other inputs
    # (the campaigns before). ``Dz`` holds one row per image, not an activation, so more
    # images cost its computation, not memory (``emq.context.bench_inputs``).
    dz_images: int | None = 0
    # The joint combination's cross-layer weight (``emq.graph.DEFAULT_CROSS``, chosen on the
    # zoo by ``python -m emq.perf.joint_shrink``); 1, the full joint form, in the campaigns
    # before 2026-12-08.
    cross: float = DEFAULT_CROSS

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "cross", check_cross(self.cross))
        if self.dz_images == 0:
            object.__setattr__(self, "dz_images", DZ_PER_CALIB * self.calib_images)
        init = fitting(LITERATURE, self.inputs) if self.init is None else self.init
        object.__setattr__(self, "init", tuple(init))
        for text in self.init:  # a clear error for unknown names or excluded inputs
            outside = leaves(canonical(from_string(text))) - set(self.inputs)
            if outside:
                raise ValueError(
                    f"seed formula {text!r} uses {','.join(sorted(outside))}, outside --inputs"
                )
        if len(self.init) > self.population:
            raise ValueError(
                f"{len(self.init)} seed formulas but the population holds {self.population}"
            )
        unknown = [n for n in self.inputs if n not in INPUT_NAMES]
        if unknown or not self.inputs:
            raise ValueError(
                f"--inputs {','.join(self.inputs)}: unknown or empty; choose from "
                f"{','.join(INPUT_NAMES)}"
            )
        if not set(self.inputs) & BIT_DEPENDENT:
            raise ValueError(
                f"--inputs must include one of {','.join(sorted(BIT_DEPENDENT))}: without a "
                "bit-dependent input no proxy can tell bit-widths apart"
            )
        if self.bench_agg not in AGGREGATES:
            raise ValueError(
                f"unknown --bench-agg {self.bench_agg!r}: expected one of {', '.join(AGGREGATES)}"
            )
        check_combine(self.combine)
        if self.dz_images is not None and self.dz_images < self.calib_images:
            raise ValueError(
                f"--dz-images {self.dz_images} is below --calib-images {self.calib_images}: "
                "Dz reads at least the images the other inputs read"
            )
        if self.mode not in ("steady", "generational"):
            raise ValueError(f"unknown mode {self.mode!r}: expected 'steady' or 'generational'")
        if self.population < 4:
            raise ValueError(f"--population must be >= 4, got {self.population}")
        if self.offspring < 1:
            raise ValueError(f"--offspring must be >= 1, got {self.offspring}")


def recorded_settings(
    settings: CampaignSettings, legacy: tuple[str, ...] = tuple(LEGACY_VALUES)
) -> dict:
    """The settings as a record, without the ``legacy`` fields that hold the value older
    records implicitly had (``LEGACY_VALUES``), so those records still match."""
    fields_ = asdict(settings)
    for key in legacy:
        if fields_[key] == LEGACY_VALUES[key]:
            del fields_[key]
    if "Dz" not in settings.inputs:  # Dz's images do not matter to a search without it
        fields_.pop("dz_images", None)
    if settings.combine == "table":  # nor the joint form's weight to a search without it
        fields_.pop("cross", None)
    return fields_


def campaign_identity(
    settings: CampaignSettings, bench: Bench, extra_benches: tuple[Bench, ...] = ()
) -> dict:
    """What must match for a run folder to be resumed (not the bench's path), as JSON."""
    fields_ = recorded_settings(settings)  # run folders predating a field resume
    if not extra_benches:  # one bench: nothing to aggregate, whatever the default
        fields_.pop("bench_agg", None)
    ident = {"settings": fields_, "bench_fingerprint": bench.fingerprint}
    # Fitness read from inputs of another cache version is not this campaign's: version 3
    # computes them in float64 (primitives.inputs); older run folders (no field) were evolved
    # on float32 ones and are not resumed with these.
    ident["inputs_version"] = INPUTS_VERSION
    if extra_benches:  # single-bench run folders keep their identity
        ident["extra_bench_fingerprints"] = [b.fingerprint for b in extra_benches]
    return json.loads(json.dumps(ident))  # tuples as the file has them


def read_checkpoint(path: Path, settings: CampaignSettings) -> dict:
    """A run folder's ``checkpoint.json``, validated against ``CHECKPOINT_SCHEMA`` and the
    campaign's settings (a clear error naming the file and field, before any work)."""
    state = read_document(path, CHECKPOINT_SCHEMA, "checkpoint")
    where = f"checkpoint {path}"
    if len(state["population"]) > settings.population:
        raise ValueError(
            f"{where}: field 'population' holds {len(state['population'])} genomes; expected at "
            f"most the campaign's population of {settings.population}"
        )
    if len(state["hall_of_fame"]) > settings.hof_size:
        raise ValueError(
            f"{where}: field 'hall_of_fame' holds {len(state['hall_of_fame'])} records; expected "
            f"at most {settings.hof_size}"
        )
    for field in ("population", "hall_of_fame"):
        for i, rec in enumerate(state[field]):
            try:
                from_string(rec["genome"])
                from_string(rec["formula"])
            except ValueError as exc:
                raise ValueError(f"{where}: field '{field}[{i}]': {exc}") from None
    if len(state["history"]) != state["step"] + 1 or state["history"][-1]["step"] != state["step"]:
        raise ValueError(
            f"{where}: field 'history' has {len(state['history'])} rows ending at step "
            f"{state['history'][-1]['step']}; expected one row per step 0..{state['step']}"
        )
    return state


def check_run_folder(run: Path, identity: dict, settings: CampaignSettings) -> bool:
    """Read-only check that ``run`` is new, empty, or this campaign's folder with valid
    ``campaign.json`` and ``checkpoint.json``. True if there is a checkpoint to resume."""
    run = Path(run)
    meta = run / "campaign.json"
    if run.exists() and not run.is_dir():
        raise ValueError(f"--run {run} is a file, not a folder; use another --run")
    if not meta.exists() and not meta.is_symlink():
        if run.exists() and any(not is_lock_file(p) for p in run.iterdir()):
            raise ValueError(f"{run} exists and is not a campaign folder; use another --run")
        return False
    old = read_document(meta, CAMPAIGN_SCHEMA, "campaign file")
    # Every identity key either side has (not the display-only bench path, version).
    keys = [k for k in {**old, **identity} if k not in ("bench", "version")]
    diff = [k for k in keys if old.get(k) != identity.get(k)]
    if "inputs_version" in diff:
        raise ValueError(
            f"run folder {run} was evolved on proxy inputs of cache version "
            f"{old.get('inputs_version', '2 or older')}, this EMQ computes version "
            f"{identity['inputs_version']} (float64; primitives.inputs): its fitness values are "
            "not comparable; use another --run"
        )
    if diff:
        detail = ""
        if "settings" in diff:
            keys = [k for k, v in identity["settings"].items() if old["settings"].get(k) != v]
            detail = f" ({', '.join(keys)})"
        raise ValueError(
            f"run folder {run} belongs to a campaign with different "
            f"{', '.join(diff)}{detail}; use another --run or the original settings"
        )
    ckpt = run / "checkpoint.json"
    if ckpt.exists() or ckpt.is_symlink():
        read_checkpoint(ckpt, settings)
        return True
    return False


def _rng_state_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _rng_state_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


class Campaign:
    """One evolution campaign bound to a run folder and a bench."""

    def __init__(
        self,
        run: Path | str,
        bench: Bench,
        evaluator: Evaluator,
        settings: CampaignSettings,
        jobs: int = 1,
        progress: bool = True,
        client: Any = None,
        extra_benches: tuple[Bench, ...] = (),
        heldout_report: Callable[[Any, str], list[dict]] | None = None,
        prune: bool = True,
    ):
        self.run = Path(run)
        # (expr, combine) -> the best proxy's reports on models never searched (``emq.transfer``)
        self.heldout_report = heldout_report
        self.bench, self.evaluator, self.settings = bench, evaluator, settings
        self.extra_benches = tuple(extra_benches)  # also searched on (``MultiEvaluator``)
        self.jobs, self.progress = jobs, progress
        # Stop evaluating a child once it cannot survive selection (steady state, several
        # benches). Selection is the same either way; the campaign's path differs only where
        # a pruned child would have been invalid on a bench it skipped (the operation
        # sampler counts it as valid). ``emq.perf.prune_speed`` compares the two.
        self.prune = prune
        self.client = client  # a distributed.Client: evaluate on its workers (jobs unused)
        self.rng = random.Random(settings.seed)
        self.sampler = OperationSampler(enabled=settings.osp, terminals=settings.inputs)
        self.toolbox = make_toolbox(self.sampler, self.rng, settings.generator, settings.max_height)
        self.screener = Screener(evaluator.shapes())
        self.population: list[Genome] = []
        self.hof: list[dict] = []
        self.history: list[dict] = []
        self.step = 0
        self.evaluations = 0
        self.eval_seconds = 0.0
        self._parallel: Parallel | None = None
        self._workers = jobs
        self._started = 0.0
        # seconds from the start of ``run_steps`` to the first evaluation result (workers
        # started, inputs mapped): the start-up cost of this invocation
        self.startup_seconds: float | None = None
        self._seeds: list[Genome] = []  # ``settings.init``, consumed by the first population
        self._task_evaluator = evaluator

    # ------------------------------------------------------------------ run folder

    def identity(self) -> dict:
        """What must match for a run folder to be resumed (``campaign_identity``)."""
        return campaign_identity(self.settings, self.bench, self.extra_benches)

    def open_folder(self) -> bool:
        """Create the run folder or check it belongs to this campaign. True if resuming.

        Call with the folder's lock held (``run_steps`` does).
        """
        if check_run_folder(self.run, self.identity(), self.settings):
            return True
        if (self.run / "campaign.json").exists():
            return False
        self.run.mkdir(parents=True, exist_ok=True)
        info = {**self.identity(), "bench": _display(self.bench.path), "version": __version__}
        atomic_write_text(self.run / "campaign.json", json.dumps(info, indent=2))
        return False

    def _genome_record(self, g: Genome) -> dict:
        return {
            "genome": str(g),
            "formula": g.canonical,
            "fitness": g.fitness.values[0],
            "fingerprint": g.fingerprint,
        }

    def _genome_from_record(self, rec: dict) -> Genome:
        g = from_string(rec["genome"])
        g.fitness.values = (rec["fitness"],)
        g.canonical, g.fingerprint = rec["formula"], rec["fingerprint"]
        return g

    def save(self) -> None:
        """Atomic checkpoint, then log.csv regenerated from the checkpointed history."""
        state = {
            "step": self.step,
            "evaluations": self.evaluations,
            "eval_seconds": self.eval_seconds,
            "rng": _rng_state_to_json(self.rng.getstate()),
            "population": [self._genome_record(g) for g in self.population],
            "hall_of_fame": self.hof,
            "screener": self.screener.state(),
            "osp": self.sampler.state(),
            "history": self.history,
        }
        atomic_write_text(self.run / "checkpoint.json", json.dumps(state))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run / "log.csv", buf.getvalue())

    def load(self) -> None:
        path = self.run / "checkpoint.json"
        state = read_checkpoint(path, self.settings)
        try:
            self.step, self.evaluations = state["step"], state["evaluations"]
            self.eval_seconds = state["eval_seconds"]
            self.rng.setstate(_rng_state_from_json(state["rng"]))
            self.population = [self._genome_from_record(r) for r in state["population"]]
            self.hof, self.history = state["hall_of_fame"], state["history"]
            self.screener.load_state(state["screener"])
            self.sampler.load_state(state["osp"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"checkpoint {path} is corrupt ({type(exc).__name__}: {exc}); "
                "delete the run folder or use another --run"
            ) from exc

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, exprs: list, floor: float | None = None) -> list[dict]:
        start = time.perf_counter()
        texts = [expr_str(e) for e in exprs]
        if self._parallel is None or len(texts) == 1:
            batches = ([self.evaluator.evaluate(e, floor)] for e in exprs)
        else:
            # The invocation's first result comes from this process: the workers' first
            # task would wait for their imports, and on few cores a task dispatched now
            # would slow this genome down (measured on 2 cores: 4-6 s instead of 0.8 s).
            here = 1 if self.startup_seconds is None else 0
            local = [[self.evaluator.evaluate(e, floor)] for e in exprs[:here]]
            tasks = (
                delayed(evaluate_texts)(self._task_evaluator, batch, floor)
                for batch in task_batches(texts[here:], self._workers, first=here > 0)
            )
            remote = self._parallel(tasks)  # a generator: batches in order, as they finish
            batches = itertools.chain(local, remote)
        results = []
        for batch in batches:
            if self.startup_seconds is None:
                self.startup_seconds = time.perf_counter() - self._started
            results += batch
        self.eval_seconds += time.perf_counter() - start
        self.evaluations += len(exprs)
        return results

    def _screen_batch(self, n: int, make, floor: float | None = None) -> list[Genome]:
        """Produce ``n`` new genomes that pass screening, evaluated and with fitness set.

        ``floor``: genomes whose fitness cannot reach it may stop evaluating early (pruned,
        ``MultiEvaluator.evaluate``); they are returned with their upper bound as fitness,
        so they count among the ``n`` and are dropped by selection as they would have been.
        """
        accepted: list[Genome] = []
        mates: list[_Mate] = []  # each accepted genome with its evaluation
        in_pop = {g.canonical for g in self.population}
        fps = {g.fingerprint for g in self.population}

        def settle(mate: _Mate) -> bool:
            """Evaluate a pruned genome in full (its fingerprint is needed); False if it
            turns out invalid on a bench it had skipped."""
            mate.result = res = self.screener.settle(mate.key, self._evaluate([mate.expr])[0])
            if res["status"] != "ok":
                return False
            mate.genome.fitness.values = (res["fitness"],)
            mate.genome.fingerprint = res["fingerprint"]
            return True

        def admit(g: Genome, expr, key: str, res: dict) -> None:
            # With DPS, a semantic duplicate of a member or of an earlier child (same
            # ranking of every search configuration, hence the same fitness) adds nothing:
            # it is not admitted. A pruned genome is no member's duplicate (it ranks below
            # them all), nor a child's whose ranking differs on a bench both evaluated; where
            # a pruned genome's might not differ, both are evaluated in full to decide, as
            # without pruning. (A child evaluated in full can be the duplicate of a pruned
            # one when it comes from the cache, evaluated in an earlier step.)
            if g.canonical in in_pop:
                return
            mate = _Mate(g, expr, key, res)
            if self.settings.dps:
                pruned = res["status"] == "pruned"
                twins = [
                    m for m in mates
                    if (pruned or m.pruned) and _may_share_ranking(m.result, res)
                ]  # fmt: skip
                for m in twins:
                    if not m.pruned:
                        continue
                    if settle(m):
                        fps.add(m.genome.fingerprint)
                    else:  # invalid after all: not admitted, as without pruning
                        accepted[:] = [a for a in accepted if a is not m.genome]
                        mates[:] = [x for x in mates if x is not m]
                        in_pop.discard(m.genome.canonical)
                if twins and pruned:
                    if not settle(mate):
                        return
                    res = mate.result
            fp = res.get("fingerprint")
            if self.settings.dps and fp is not None and fp in fps:
                return
            g.fitness.values = (res["fitness"],)
            g.fingerprint = fp
            accepted.append(g)
            mates.append(mate)
            in_pop.add(g.canonical)
            if fp is not None:
                fps.add(fp)

        attempts = 0
        while len(accepted) < n and attempts < 100 * n:
            pending: list[tuple[Genome, object, str]] = []
            while len(pending) + len(accepted) < n and attempts < 100 * n:
                attempts += 1
                g = make()
                v = self.screener.static(g)
                g.canonical = expr_str(v.expr)
                if v.stage is None:
                    if all(v.key != k for _, _, k in pending):
                        pending.append((g, v.expr, v.key))
                    continue
                if v.stage != "s1_equivalent":
                    self.sampler.record(ops_used(v.expr), accepted=False)
                    continue
                if v.cached.get("status") in VALID:
                    admit(g, v.expr, v.key, v.cached)
            results = self._evaluate([e for _, e, _ in pending], floor)
            for (g, expr, key), res in zip(pending, results, strict=True):
                res = self.screener.record(key, res)
                ok = res["status"] in VALID
                self.sampler.record(ops_used(expr), accepted=ok)
                if ok:
                    admit(g, expr, key, res)
        return accepted

    # ------------------------------------------------------------------ selection

    def _select_parent(self) -> Genome:
        pop = sorted(self.population, key=lambda g: -g.fitness.values[0])
        if self.settings.dps:
            # DPS: the top half, one representative per rank fingerprint.
            seen, pool = set(), []
            for g in pop[: max(2, len(pop) // 2)]:
                if g.fingerprint not in seen:
                    seen.add(g.fingerprint)
                    pool.append(g)
            k = 2
        else:
            pool, k = pop, 3
        contenders = [pool[self.rng.randrange(len(pool))] for _ in range(k)]
        return max(contenders, key=lambda g: g.fitness.values[0])

    def _offspring(self) -> Genome:
        a = copy.deepcopy(self._select_parent())
        if self.rng.random() < self.settings.cxpb:
            b = copy.deepcopy(self._select_parent())
            a, _ = self.toolbox.mate(a, b)
        if self.rng.random() < self.settings.mutpb or str(a) in {str(g) for g in self.population}:
            (a,) = self.toolbox.mutate(a)
        del a.fitness.values
        return a

    def unique_ratio(self) -> float:
        fps = [g.fingerprint for g in self.population]
        return len(set(fps)) / len(fps) if fps else 0.0

    # ------------------------------------------------------------------ loop

    def _record_step(self, wall: float) -> None:
        fits = np.array([g.fitness.values[0] for g in self.population])
        for g in sorted(self.population, key=lambda g: -g.fitness.values[0]):
            rec = self._genome_record(g)
            if all(h["formula"] != rec["formula"] for h in self.hof):
                self.hof.append({**rec, "step": self.step})
        self.hof = sorted(self.hof, key=lambda h: -h["fitness"])[: self.settings.hof_size]
        counts = self.screener.counts
        self.history.append(
            {
                "step": self.step,
                "evaluations": self.evaluations,
                "best": float(fits.max()),
                "median": float(np.median(fits)),
                "validity": round(validity_rate(counts), 4),
                "unique_ratio": round(self.unique_ratio(), 4),
                "evals_per_s": round(self.evaluations / max(self.eval_seconds, 1e-9), 2),
                "seconds": round(wall, 2),
                **{s: counts[s] for s in STAGES},
            }
        )

    def run_steps(self, steps: int) -> dict:
        """Run (or resume) until ``steps`` steps are done; returns the summary.

        The run folder is checked before anything is written, then locked: a second
        process writing the same folder is refused (``benchmark.lock``).
        """
        check_run_folder(self.run, self.identity(), self.settings)
        self.run.mkdir(parents=True, exist_ok=True)
        with exclusive(run_folder_lock(self.run), f"run folder {self.run}"):
            return self._run_steps(steps)

    def _run_steps(self, steps: int) -> dict:
        self._started = time.perf_counter()
        resumed = self.open_folder()
        if resumed:
            self.load()
        wall0 = time.perf_counter() - (self.history[-1]["seconds"] if self.history else 0.0)
        shipped, self._workers = self._task_setup()
        with (
            pool(self.client, self.jobs, scatter=[shipped]) as n_jobs,
            _parallel(n_jobs) as parallel,
        ):
            self._parallel, self._task_evaluator = parallel, shipped
            if not self.population:
                self._seeds = [from_string(t) for t in self.settings.init]
                self.population = self._screen_batch(self.settings.population, self._fresh)
                if len(self.population) < 2:
                    raise ValueError(
                        "no valid initial population: the seed formulas and random genomes "
                        "were all rejected on these benches; try another --seed or a larger "
                        "--population"
                    )
                self._record_step(time.perf_counter() - wall0)
                self.save()
            bar = tqdm(
                total=steps, initial=min(self.step, steps), disable=not self.progress,
                desc=f"evolve {self.run.name}", unit="step",
            )  # fmt: skip
            while self.step < steps:
                self._one_step()
                self.step += 1
                self._record_step(time.perf_counter() - wall0)
                self.save()
                last = self.history[-1]
                bar.update(1)
                bar.set_postfix(
                    best=f"{last['best']:.4f}", valid=f"{last['validity']:.2f}",
                    evals_s=f"{last['evals_per_s']:.1f}",
                )  # fmt: skip
            bar.close()
        self._parallel, self._task_evaluator = None, self.evaluator
        return self.summary()

    def _task_setup(self) -> tuple[Any, int]:
        """The evaluator tasks receive, and how many workers share the tasks.

        Workers map the inputs from their cache files when they can read them (local
        workers always can; cluster workers with a shared cache folder); otherwise the
        evaluator carries the inputs, sent once to each worker.
        """
        if self.client is None:
            return self.evaluator, self.jobs
        check_workers(self.client, "emq", package_version("emq"))
        paths = [p.inputs_path for p in getattr(self.evaluator, "parts", [self.evaluator])]
        readable = workers_can_read(self.client, paths)
        shipped = self.evaluator if readable else self.evaluator.portable()
        return shipped, max(1, sum(self.client.nthreads().values()))

    def _fresh(self) -> Genome:
        if self._seeds:
            return self._seeds.pop(0)
        return self.toolbox.individual()

    def _one_step(self) -> None:
        s = self.settings
        if s.mode == "steady":
            # A child below every member is dropped whatever its exact fitness: with a full
            # population its evaluation may stop early (``prune``). The population minimum
            # never falls, so a pruned genome met again later is dropped again.
            full = len(self.population) >= s.population
            floor = min(g.fitness.values[0] for g in self.population) if full else None
            children = self._screen_batch(
                s.offspring, self._offspring, floor if self.prune else None
            )
            pool = self.population + children
            # Remove the worst; among equals, the oldest goes first (list order).
            order = sorted(range(len(pool)), key=lambda i: (-pool[i].fitness.values[0], -i))
            self.population = [pool[i] for i in sorted(order[: s.population])]
        else:
            children = self._screen_batch(s.population, self._offspring)
            elite = sorted(self.population, key=lambda g: -g.fitness.values[0])[:2]
            pool = elite + children
            pool.sort(key=lambda g: -g.fitness.values[0])
            self.population = pool[: s.population]

    def best(self) -> Genome:
        return max(self.population, key=lambda g: g.fitness.values[0])

    def summary(self) -> dict:
        """Best proxy, its search fitness and held-out report; writes best.json and plots."""
        best = self.best()
        expr = self.screener_expr(best)
        combine = self.combine_of(expr)
        heldout = self.evaluator.report(expr, "heldout", combine)
        out = {
            "formula": best.canonical,
            "genome": str(best),
            "genome_names": prefix_names(expr),
            "combine": combine,
            **({"cross": self.settings.cross} if combine == "joint" else {}),
            "fitness_search": best.fitness.values[0],
            "heldout": heldout,
            "step": self.step,
            "evaluations": self.evaluations,
            "bench": _display(self.bench.path),
            "bench_fingerprint": self.bench.fingerprint,
            "settings": asdict(self.settings),
            **self._extra_summary(expr, combine),
            "version": __version__,
        }
        if self.heldout_report is not None:
            out["heldout_models"] = self.heldout_report(expr, combine)
        atomic_write_text(self.run / "best.json", json.dumps(_finite(out), indent=2))
        plot_campaign(self.run, self.history, self.evaluator, expr, best.canonical, combine)
        export_run(self.run)
        if self.startup_seconds is not None:  # a timing: printed (--json), not in best.json
            out["startup_seconds"] = round(self.startup_seconds, 3)
        return out

    def combine_of(self, expr) -> str:
        """How the campaign combines ``expr``'s layers: ``joint`` when its ``--combine auto``
        fitness came from the joint combination (its screening result says; evaluated again
        when that result predates the field), else ``table``."""
        if self.settings.combine == "table":
            return "table"
        cached = self.screener.cache.get(dag_hash(expr)) or {}
        if cached.get("status") == "ok" and "combine" in cached:
            return cached["combine"]
        return self.evaluator.evaluate(expr).get("combine", "table")

    def _extra_summary(self, expr, combine: str = "table") -> dict:
        """Per-bench search fitness and held-out reports of a multi-bench campaign."""
        if not self.extra_benches:
            return {}
        benches = [self.bench, *self.extra_benches]
        return {
            "extra_benches": [_display(b.path) for b in self.extra_benches],
            "per_bench": [
                {"bench": _display(b.path), "search": s["spearman@topk"], "heldout": h}
                for b, s, h in zip(
                    benches,
                    self.evaluator.reports(expr, "search", combine),
                    self.evaluator.reports(expr, "heldout", combine),
                    strict=True,
                )
            ],  # fmt: skip
        }

    @staticmethod
    def screener_expr(g: Genome):
        return canonical(from_string(g.canonical))


@dataclass
class _Mate:
    """A genome accepted in a batch, with what screening knows of it."""

    genome: Genome
    expr: Any
    key: str
    result: dict

    @property
    def pruned(self) -> bool:
        return self.result["status"] == "pruned"


def _may_share_ranking(a: dict, b: dict) -> bool:
    """Whether two evaluated genomes may be semantic duplicates as far as the benches that
    both evaluated show (True when a result does not say, e.g. from an older campaign)."""
    fa, fb = a.get("bench_fingerprints"), b.get("bench_fingerprints")
    if fa is None or fb is None:
        return True
    return all(x == y for x, y in zip(fa, fb, strict=True) if x is not None and y is not None)


def _finite(value: Any) -> Any:
    """``value`` with NaN/infinite floats as None: files are strict JSON (read back by
    ``emq.schemas``), and an undefined correlation is null there."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _display(path: Path) -> str:
    """A path relative to the working directory when it lies below it (portable records)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parallel(n_jobs: int) -> Any:
    """joblib ``Parallel`` yielding each task's result in order as it comes (start-up is
    the first one), or nothing for one job (evaluated in this process)."""
    return Parallel(n_jobs=n_jobs, return_as="generator") if n_jobs != 1 else _NoParallel()


class _NoParallel:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def task_batches(texts: list[str], workers: int, first: bool = False) -> list[list[str]]:
    """``texts`` in order, cut into about two batches per worker.

    A genome costs milliseconds to seconds; one task per genome spends a round trip (the
    evaluator pickled, a result sent back) on each, one task per worker leaves a worker idle
    behind the other's slow genome. Two per worker balances the two. With ``first`` (the
    invocation's first round, while the workers start) each worker's first task is one
    genome, so a worker still starting holds up one genome, not a whole batch.
    """
    if first and len(texts) > workers:
        return [[t] for t in texts[:workers]] + task_batches(texts[workers:], workers)
    n = max(1, min(len(texts), 2 * max(1, workers)))
    size, extra = divmod(len(texts), n)
    bounds = [0]
    for i in range(n):
        bounds.append(bounds[-1] + size + (i < extra))
    return [texts[a:b] for a, b in itertools.pairwise(bounds) if b > a]


__all__ = ["Campaign", "CampaignSettings"]
