"""One model to allocate bits for: its layers, groups, simulator, data and scorers.

``AllocationProblem`` ties the pieces together for the CLI and the comparison: phase 1
from any scorer spec (``sqnr-measured``, a baseline name, a proxy JSON or a run folder),
any registered allocator (``emq.allocate.registry``: SQNR, SMPQ, ILP, ...) under a BOPs
and/or weight-size budget or an accuracy target, the measured phase 2 (``verify``), uniform
precision, and measured accuracy with the bench's settings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.adaround import AdaRoundSettings
from benchmark.data import load_split
from benchmark.ptq import DEFAULT_BITS, QuantSim, layer_table, quantizable_layers, relative_bops
from emq.allocate.budget import (
    Budget,
    SizeSpec,
    check_size_budget,
    relative_size,
    size_mb,
)
from emq.allocate.groups import (
    QuantizerGroup,
    default_candidates,
    default_groups,
    group_choice,
    layer_bits,
    load_groups,
)
from emq.allocate.ilp import allocate_ilp
from emq.allocate.registry import (
    AllocationRequest,
    allocator_names,
    check_options,
    get_allocator,
)
from emq.allocate.result import (
    CALIB_IMAGES,
    CALIB_SEED,
    VALIDATION_IMAGES,
    Allocation,
    make_allocation,
    measure,
    training_subset,
    validation_split,
)
from emq.allocate.sensitivity import (
    MEASURED,
    SensitivityTable,
    _cache_path,
    _groups_key,
    _JsonCache,
    cache_key,
    measured_sensitivity,
    rounding_key,
    scorer_sensitivity,
)
from emq.allocate.sqnr import check_bops_budget, greedy_front
from emq.allocate.verify import Candidate, candidate_pool, chunk_bounds, uniform_choices, verify
from emq.scorers import resolve_scorer
from emq.scoring import SCORING_IMAGES, ScoreContext, rank_scores, scorer_inputs
from primitives.inputs import InputSettings

SQNR_IMAGES = 256  # calibration images whose output SQNR phase 1 measures (as in the paper)
# A joint proxy's verification draws this many times K ILP solutions and front points and
# measures the K its joint combination ranks best (``verification_pool``; README "The joint
# combination in the verification"): ``python -m emq.perf.joint_pool`` ranked such pools of
# 12 + 12 better with the joint form than with the table in most cells.
JOINT_POOL = 3
SCORER_IMAGES = SCORING_IMAGES  # training-free scorers' calibration images (emq score's)


def __getattr__(name: str) -> Any:
    # METHODS: the registered allocators' names, read when asked (a later registration shows)
    if name == "METHODS":
        return allocator_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class AllocationProblem:
    """A model, its quantizer groups and everything needed to allocate and judge bits.

    ``cache``: phase-1 (and proxy-input) cache folder; ``None`` = default, ``False`` = off.
    """

    name: str
    model: nn.Module
    groups: list[QuantizerGroup]
    cache: Path | str | bool | None = None
    sqnr_images: int = SQNR_IMAGES
    scorer_images: int = SCORER_IMAGES  # training-free scorers: 128 at a time (score_table)
    validation_images: int = VALIDATION_IMAGES
    rounding: str = "nearest"
    adaround: AdaRoundSettings | None = None
    layer_names: list[str] = field(init=False)
    macs: list[int] = field(init=False)
    weights: list[int] = field(init=False)  # weight elements per layer (weight memory)
    sim: QuantSim = field(init=False)
    _tables: dict[str, SensitivityTable] = field(init=False, default_factory=dict)
    _data: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(init=False, default_factory=dict)
    _fp: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        calib, _ = training_subset(0, CALIB_IMAGES, CALIB_SEED)
        self.sim = QuantSim(self.model, calib, rounding=self.rounding, adaround=self.adaround)
        self.layer_names = [n for n, _ in self.sim.layers]
        self.macs = [info.macs for info in layer_table(self.model, tuple(calib.shape[1:]))]
        self.weights = [int(w.numel()) for w in self.sim.fp_weights]
        covered = sorted(i for g in self.groups for i in g.layers)
        if covered != list(range(len(self.layer_names))):
            raise ValueError("quantizer groups must cover every quantizable layer exactly once")

    @classmethod
    def for_model(
        cls,
        name: str,
        model: nn.Module,
        groups_file: Path | str | None = None,
        bits: Sequence[int] = DEFAULT_BITS,
        **kwargs,
    ) -> AllocationProblem:
        """Default groups (one per layer, ``W{bits}A8``) or the groups of a JSON file."""
        names = [n for n, _ in quantizable_layers(model)]
        fallback = default_candidates(bits)
        groups = (
            load_groups(groups_file, names, fallback)
            if groups_file
            else default_groups(names, fallback)
        )
        return cls(name, model, groups, **kwargs)

    # ------------------------------------------------------------------ data
    def data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``"test"``: the full test set; ``"validation"``: held-back training images."""
        if split not in self._data:
            if split == "test":
                self._data[split] = load_split("test")
            elif split == "validation":
                self._data[split] = validation_split(self.validation_images)
            else:
                raise ValueError(f"unknown split {split!r}: expected 'test' or 'validation'")
        return self._data[split]

    def accuracy(self, w_bits: Sequence[int], a_bits: Sequence[int], split: str = "test") -> float:
        """Measured PTQ top-1 (%) of a configuration on ``split``."""
        x, y = self.data(split)
        return measure(self.sim, x, y, w_bits, a_bits)

    def fp_accuracy(self, split: str = "test") -> float:
        """Full-precision top-1 (%) on ``split`` (BN folded)."""
        if split not in self._fp:
            fp = [None] * len(self.layer_names)
            self._fp[split] = self.accuracy(fp, fp, split)
        return self._fp[split]

    def prepare(self) -> float:
        """Compute ``Q_b(W)`` of every layer at every candidate weight width (seconds taken).

        The quantizer's own set-up, shared by measured SQNR's phase 1 and by every measured
        configuration; done lazily otherwise, so the first user would pay for it.
        """
        start = time.perf_counter()
        for g in self.groups:
            for i in g.layers:
                for w, _ in g.candidates:
                    self.sim.quantized_weight(i, w)
        return time.perf_counter() - start

    # ------------------------------------------------------------------ phase 1
    def scorer_name(self, spec: str) -> str:
        """A short label of a scorer spec for tables."""
        return spec if spec == MEASURED else Path(str(spec)).stem

    def sensitivity(self, spec: str) -> SensitivityTable:
        """Phase-1 table of a scorer spec, computed once per problem."""
        if spec not in self._tables:
            if spec == MEASURED:
                x = self.sim.calib[: self.sqnr_images]
                table = measured_sensitivity(self.sim, x, self.groups, self.cache)
            else:
                scorer = resolve_scorer(spec)
                w_bits = sorted({w for g in self.groups for w, _ in g.candidates})
                x, y = training_subset(0, self.scorer_images, CALIB_SEED)
                settings = InputSettings(
                    candidates=tuple(w_bits), names=scorer_inputs(scorer),
                    rounding=self.rounding, adaround=self.sim.rounder and self.sim.rounder.settings,
                )  # fmt: skip
                cache = False if self.cache is False else None
                # The inputs compute their own Q_b(W), in float64 like the rest of them
                # (primitives.inputs), so they are the same as a campaign's on every CPU.
                ctx = ScoreContext(self.model, x, y, settings, cache)
                table = scorer_sensitivity(scorer, ctx, self.groups, self.cache)
            self._tables[spec] = table
        return self._tables[spec]

    # ------------------------------------------------------------------ budgets
    def size_fraction(self, spec: SizeSpec | float | None) -> float | None:
        """A ``--budget-size`` (MB or fraction of W8) as a fraction of this model's W8 size."""
        if spec is None or isinstance(spec, float | int):
            return None if spec is None else float(spec)
        return spec.fraction(float(sum(self.weights)))  # W8: one byte per weight

    def check_budget(self, budget: Budget, given_size: str = "") -> None:
        """Clear error when no configuration of these groups meets ``budget``."""
        if not budget:
            raise ValueError("give a budget: --budget-bops R and/or --budget-size S")
        if budget.bops is not None:
            check_bops_budget(budget.bops, self.groups, self.macs)
        if budget.size is not None:
            check_size_budget(budget.size, self.groups, self.weights, given_size)

    def costs(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> dict:
        """Relative BOPs, weight size (fraction of W8) and weight MB of a configuration."""
        return {
            "relative_bops": relative_bops(self.macs, w_bits, a_bits),
            "relative_size": relative_size(self.weights, w_bits),
            "size_mb": size_mb(self.weights, w_bits),
        }

    # ------------------------------------------------------------------ allocators
    def allocate(
        self,
        method: str,
        scorer: str,
        budget_bops: float | None = None,
        accuracy_target: float | None = None,
        budget_size: float | None = None,
        verify: int = 0,
        **options: Any,
    ) -> Allocation:
        """Run one registered allocator; ``seconds`` covers phase 1 (when not cached) and 2.

        ``method``: a name of ``emq.allocate.registry`` (unknown: an error before any work).
        ``options``: allocator options (``search`` for SQNR; ``smpq_value``, ``lam``,
        ``permutations``, ``threshold``, ``beta``, ``xi``, ``seed`` for SMPQ; ...): each
        allocator takes those it declares, the rest are other methods' and ignored.
        ``budget_size``: weight memory as a fraction of W8 (``size_fraction`` converts MB).
        ``verify=K > 0`` (budgets only): measure the answer, next-best ILP solutions, greedy
        front points and every uniform configuration that fits on validation images and
        return the best measured (``emq.allocate.verify``); the unverified answer is kept in
        ``details["unverified"]`` and the race in ``details["verify"]``.
        """
        entry = get_allocator(method)
        check_options(options)
        budget = Budget(budget_bops, budget_size)
        if budget and accuracy_target is not None:
            raise ValueError("give either a budget (BOPs, weight size) or an accuracy target")
        if budget:
            self.check_budget(budget)
        if accuracy_target is not None and accuracy_target > self.fp_accuracy("validation"):
            raise ValueError(
                f"accuracy target {accuracy_target:g} is above the full-precision accuracy "
                f"{self.fp_accuracy('validation'):.2f} on the {self.validation_images} "
                "validation images"
            )
        if not entry.accuracy_target and not budget:
            raise ValueError(
                f"the {method.upper()} allocator needs a budget (--budget-bops, --budget-size)"
            )
        if verify < 0:
            raise ValueError(f"--verify must be >= 0, got {verify}")
        options = entry.bind(options)
        table, phase1 = None, 0.0
        if entry.needs_table(options):
            cached = scorer in self._tables
            table = self.sensitivity(scorer)
            phase1 = 0.0 if cached else table.seconds
        request = AllocationRequest(
            method, self.scorer_name(scorer), table, budget, accuracy_target, tuple(self.groups),
            tuple(self.layer_names), tuple(self.macs), tuple(self.weights),
            lambda w, a: self.accuracy(w, a, "validation"),
        )  # fmt: skip
        own = entry(request, **options)
        answer = group_choice(self.groups, own.w_bits, own.a_bits)  # also checks the bits
        details = {**own.details, "phase1_seconds": phase1,
                   "sensitivity_source": table.source if table else None,
                   "budget_bops": budget_bops}  # fmt: skip
        if budget_size is not None:
            details["budget_size"] = budget_size
        details.update({k: v for k, v in self.costs(own.w_bits, own.a_bits).items()
                        if k != "relative_bops"})  # fmt: skip
        alloc = make_allocation(
            method, own.scorer, self.layer_names, self.macs, own.w_bits, own.a_bits,
            phase1 + own.seconds, (table.evaluations if table else 0) + own.evaluations,
            **details,
        )  # fmt: skip
        if verify and budget:
            return self._verified(alloc, answer, table, budget, verify)
        return alloc

    # ------------------------------------------------------------------ measured phase 2
    def fits(self, budget: Budget, choice: Sequence[int]) -> bool:
        """Whether a choice (candidate index per group) meets ``budget``."""
        w, a = layer_bits(self.groups, choice, len(self.macs))
        c = self.costs(w, a)
        return budget.fits(c["relative_bops"], c["relative_size"])

    def verification_pool(
        self,
        answer: Sequence[int],
        table: SensitivityTable | None,
        budget: Budget,
        k: int,
    ) -> list[Candidate]:
        """The answer, next-best ILP solutions, front points near the budget, uniform ones.

        With a joint proxy's Gram (``SensitivityTable.gram``), ``JOINT_POOL`` times as many
        ILP solutions and front points are drawn and ranked by the joint combination (the
        layers' interactions, which the table the ILP optimises leaves out); its best ones
        follow the answer (``candidate_pool``'s ``ranked``)."""
        ilp, front = [], []
        draw = k * JOINT_POOL if table is not None and table.gram is not None else k
        if table is not None and k > 1:
            ilp, front = self.near_optimal(table, budget, draw)
        uniform = [u for u in uniform_choices(self.groups) if self.fits(budget, u.choice)]
        if table is None or table.gram is None or k <= 1:
            return candidate_pool(tuple(answer), k, ilp, front, uniform)
        drawn = [(f"ilp #{i + 1}", tuple(c)) for i, c in enumerate(ilp)]
        drawn += [(f"front +{i}", tuple(c)) for i, c in enumerate(front)]
        scores = table.joint_scores([c for _, c in drawn])
        order = np.argsort(-rank_scores(scores), kind="stable")  # ties: the ILP's order
        ranked = [(f"joint #{r + 1} ({drawn[i][0]})", drawn[i][1]) for r, i in enumerate(order)]
        return candidate_pool(tuple(answer), k, uniform=uniform, ranked=ranked)

    def near_optimal(self, table: SensitivityTable, budget: Budget, n: int) -> tuple[list, list]:
        """The ILP's ``n`` best choices on ``table`` (no-good cuts) and the ``n`` greedy-front
        points at and after the first one within ``budget``."""
        res = allocate_ilp(table, self.macs, budget.bops, budget.size, self.weights, n)
        points = [p.choice for p in greedy_front(table, self.macs)]
        first = next((i for i, c in enumerate(points) if self.fits(budget, c)), None)
        return [res.choice, *res.alternatives], [] if first is None else points[first : first + n]

    def _verification_cache(self) -> _JsonCache:
        x, _ = self.data("validation")
        parts = ["verify", _groups_key(self.groups), self.sim.clip_grid, self.rounding,
                 *rounding_key(self.sim)]  # fmt: skip
        return _JsonCache(_cache_path(self.cache, cache_key(self.model, [self.sim.calib, x],
                                                            *parts)))  # fmt: skip

    def _verified(self, alloc: Allocation, answer, table, budget: Budget, k: int) -> Allocation:
        start = time.perf_counter()
        pool = self.verification_pool(answer, table, budget, k)
        x, y = self.data("validation")
        bounds = chunk_bounds(len(x))
        store = self._verification_cache()
        n = len(self.macs)

        def correct_of(choice, chunk: int) -> tuple[np.ndarray, bool]:
            w, a = layer_bits(self.groups, choice, n)
            lo, hi = bounds[chunk]
            entry = f"{','.join(map(str, w))}|{','.join(map(str, a))}|{lo}:{hi}"
            if entry in store.data:
                return np.frombuffer(store.data[entry].encode(), np.uint8) == ord("1"), True
            try:
                self.sim.set_config(w, a)
                flags = (self.sim.forward(x[lo:hi]).argmax(1) == y[lo:hi]).numpy()
            finally:
                self.sim.set_fp()
            store.put(entry, "".join("1" if f else "0" for f in flags))
            return flags, False

        def describe(choice) -> dict:
            w, a = layer_bits(self.groups, choice, n)
            return {"w_bits": w, "a_bits": a, **self.costs(w, a)}

        pool_seconds = time.perf_counter() - start
        ver = verify(pool, correct_of, len(bounds), describe)
        w, a = layer_bits(self.groups, ver.winner.choice, n)
        details = dict(alloc.details)
        details["unverified"] = {
            "w_bits": alloc.w_bits,
            "a_bits": alloc.a_bits,
            "relative_bops": alloc.relative_bops,
            "seconds": alloc.seconds,
            "evaluations": alloc.evaluations,
        }
        details.update({k_: v for k_, v in self.costs(w, a).items() if k_ != "relative_bops"})
        seconds = pool_seconds + ver.seconds
        details["verify"] = {"k": k, "validation_images": len(x), **ver.to_dict(),
                             "seconds": seconds}  # fmt: skip
        return make_allocation(
            alloc.method, alloc.scorer, self.layer_names, self.macs, w, a,
            alloc.seconds + seconds, alloc.evaluations + ver.evaluations, **details,
        )  # fmt: skip

    def uniform(self, budget_bops: float | None, budget_size: float | None = None) -> Allocation:
        """Uniform precision: every group at the same candidate rank, the costliest that fits."""
        budget = Budget(budget_bops, budget_size)
        self.check_budget(budget)
        start = time.perf_counter()
        fitting = [u for u in uniform_choices(self.groups) if self.fits(budget, u.choice)]
        if not fitting:
            raise ValueError(f"no uniform configuration meets {budget.describe()}")
        w, a = layer_bits(self.groups, fitting[0].choice, len(self.macs))
        return make_allocation("uniform", "-", self.layer_names, self.macs, w, a,
                               time.perf_counter() - start, 0,
                               **{k: v for k, v in self.costs(w, a).items()
                                  if k != "relative_bops"})  # fmt: skip
