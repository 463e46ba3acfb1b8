"""Compatibility screening (CSP), cheapest stage first, each stage counted.

1. canonical form + networkx DAG hash: an equivalent genome seen before reuses its result;
2. static shape inference on every layer's input shapes (no tensor math), and rejection of
   graphs that read no bit-dependent input (they cannot rank configurations);
3. numeric probe on the two smallest layers (``Evaluator.probe``, run with the evaluation);
4. rank fingerprint of the evaluated scores: semantic duplicates are marked;
5. pruning (several benches, steady state): a child whose fitness can no longer reach the
   population's minimum stops evaluating after the benches done so far. It counts as
   evaluated (it was valid on them) and as ``pruned``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from emq.fitness import INVALID
from emq.graph import Expr, canonical, dag_hash, depends_on_bits, infer_shape
from primitives.operations import ShapeError

STAGES = (
    "generated",
    "s1_equivalent",
    "s2_shape",
    "s2_no_bits",
    "s3_probe",
    "invalid",
    "evaluated",
    "s4_semantic_dup",
    "pruned",
)
VALID = ("ok", "pruned")  # statuses of genomes that evaluated validly


@dataclass
class Verdict:
    """Outcome of the static stages for one genome."""

    expr: Expr
    key: str
    stage: str | None  # None: passed stages 1-2 and needs evaluation
    cached: dict | None = None


@dataclass
class Screener:
    """Static screening with a fitness cache keyed by the canonical DAG hash."""

    shapes: list[dict[str, tuple[int, ...]]]
    counts: Counter = field(default_factory=Counter)
    cache: dict[str, dict] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    def static(self, genome) -> Verdict:
        """Stages 1 and 2 for a genome (counts updated)."""
        self.counts["generated"] += 1
        expr = canonical(genome)
        key = dag_hash(expr)
        if key in self.cache:
            self.counts["s1_equivalent"] += 1
            return Verdict(expr, key, "s1_equivalent", self.cache[key])
        if not depends_on_bits(expr):
            self.counts["s2_no_bits"] += 1
            return self._reject(expr, key, "s2_no_bits")
        try:
            for layer_shapes in self.shapes:
                infer_shape(expr, layer_shapes)
        except ShapeError:
            self.counts["s2_shape"] += 1
            return self._reject(expr, key, "s2_shape")
        return Verdict(expr, key, None)

    def _reject(self, expr: Expr, key: str, stage: str) -> Verdict:
        result = {"status": stage, "fitness": INVALID}
        self.cache[key] = result
        return Verdict(expr, key, stage, result)

    def record(self, key: str, result: dict) -> dict:
        """Store an evaluation result (stages 3-5); marks semantic duplicates."""
        status = result["status"]
        if status == "probe":
            self.counts["s3_probe"] += 1
        elif status == "invalid":
            self.counts["invalid"] += 1
        else:
            self.counts["evaluated"] += 1
            if status == "pruned":
                self.counts["pruned"] += 1
            else:
                result = self._mark_duplicate(key, result)
        self.cache[key] = result
        return result

    def settle(self, key: str, result: dict) -> dict:
        """Replace a pruned result by the same genome's full evaluation (which may be
        invalid on a bench the pruned one skipped)."""
        self.counts["pruned"] -= 1
        self.counts["evaluated"] -= 1
        return self.record(key, result)

    def _mark_duplicate(self, key: str, result: dict) -> dict:
        fp = result["fingerprint"]
        if fp in self.fingerprints and self.fingerprints[fp] != key:
            self.counts["s4_semantic_dup"] += 1
            return {**result, "duplicate_of": self.fingerprints[fp]}
        self.fingerprints.setdefault(fp, key)
        return result

    def state(self) -> dict:
        return {
            "counts": dict(self.counts),
            "cache": dict(self.cache),
            "fingerprints": dict(self.fingerprints),
        }

    def load_state(self, state: dict) -> None:
        self.counts = Counter(state["counts"])
        self.cache = dict(state["cache"])
        self.fingerprints = dict(state["fingerprints"])


def validity_rate(counts: Counter) -> float:
    """Fraction of newly screened genomes (not stage-1 repeats) that evaluated validly."""
    new = counts["generated"] - counts["s1_equivalent"]
    return counts["evaluated"] / new if new else 0.0
