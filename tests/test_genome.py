"""Genomes: parsing by registered names only, pickling, generators and variation operators."""

from __future__ import annotations

import copy
import pickle
import random
from operator import attrgetter

import joblib
import pytest
from joblib.externals.loky import get_reusable_executor

from emq.genome import (
    MUTATIONS,
    Genome,
    UnknownNameError,
    from_names,
    from_string,
    gen_branched,
    gen_tree,
    make_toolbox,
    mut_insert,
    mut_point,
    mut_shrink,
    to_names,
)
from emq.osp import OperationSampler
from primitives.inputs import INPUT_NAMES
from primitives.operations import OPS


def _genomes(n: int, seed: int = 0, enabled: bool = False) -> list[Genome]:
    """``n`` seeded genomes, alternating the two generators."""
    sampler, rng = OperationSampler(enabled=enabled), random.Random(seed)
    return [gen_branched(sampler, rng) if i % 2 else gen_tree(sampler, rng) for i in range(n)]


def _is_valid(tree: Genome) -> bool:
    """A complete prefix expression whose text parses back to the same nodes."""
    names = to_names(tree)
    return to_names(from_string(str(tree))) == names and to_names(from_names(names)) == names


# --------------------------------------------------------------------------- parsing


def test_from_string_round_trips_generated_genomes():
    for g in _genomes(300):
        parsed = from_string(str(g))
        assert isinstance(parsed, Genome)
        assert str(parsed) == str(g)
        assert to_names(parsed) == to_names(g)


def test_from_string_accepts_whitespace_variants():
    assert str(from_string("mul(sqrt(W),b)")) == "mul(sqrt(W), b)"
    assert str(from_string("  mul ( sqrt( W ) ,\n b ) ")) == "mul(sqrt(W), b)"
    assert str(from_string("E")) == "E"


def test_names_round_trip():
    for g in _genomes(200, seed=1):
        names = to_names(g)
        assert all(n in OPS or n in INPUT_NAMES for n in names)
        rebuilt = from_names(names)
        assert to_names(rebuilt) == names
        assert str(rebuilt) == str(g)


def test_to_names_is_prefix_order():
    names = ["mul", "sqrt", "W", "sub", "E", "b"]
    assert to_names(from_string("mul(sqrt(W), sub(E, b))")) == names


@pytest.mark.parametrize(
    "text, token",
    [
        ("foo", "foo"),
        ("__import__('os')", "__import__"),
        ("mul(W, foo)", "foo"),
        ("abs(ARG0)", "ARG0"),
        ("Abs(W)", "Abs"),
        ("mul(W, __class__)", "__class__"),
    ],
)
def test_unknown_name_in_text_is_named(text, token):
    with pytest.raises(UnknownNameError) as info:
        from_string(text)
    assert repr(token) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "names, token",
    [(["mul", "foo", "b"], "foo"), (["__import__"], "__import__"), (["abs", 3], "3")],
)
def test_unknown_name_in_list_is_named(names, token):
    with pytest.raises(UnknownNameError, match=token):
        from_names(names)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "mul(W)",
        "abs()",
        "abs(W",
        "mul(W, b))",
        "mul W b",
        "W b",
        "abs(W)b",
        "abs(W),",
        "abs(W) + b",
        "mul(W; b)",
        "abs(W)(b)",
    ],
)
def test_malformed_text_raises_value_error(text):
    with pytest.raises(ValueError) as info:
        from_string(text)
    assert not isinstance(info.value, UnknownNameError)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("names", [[], ["mul", "W"], ["W", "b"], ["abs", "W", "b"], ["abs"]])
def test_invalid_prefix_list_raises_value_error(names):
    with pytest.raises(ValueError, match="prefix") as info:
        from_names(names)
    assert not isinstance(info.value, UnknownNameError)


# --------------------------------------------------------------------------- pickling


def _annotated(text: str = "mul(sqrt(W), sub(E, b))") -> Genome:
    g = from_string(text)
    g.fitness.values = (0.375,)
    g.fingerprint = "0123456789abcdef"
    g.canonical = "mul(sqrt(W), sub(E, b))"
    return g


def test_pickle_preserves_tree_fitness_and_metadata():
    g = _annotated()
    back = pickle.loads(pickle.dumps(g))
    assert type(back) is Genome
    assert str(back) == str(g) and to_names(back) == to_names(g)
    assert back.fitness.valid and back.fitness.values == (0.375,)
    assert back.fingerprint == g.fingerprint and back.canonical == g.canonical


def test_pickle_keeps_invalid_fitness_invalid():
    back = pickle.loads(pickle.dumps(from_string("abs(E)")))
    assert not back.fitness.valid
    assert back.fingerprint is None and back.canonical is None


def test_deepcopy_is_independent_and_preserves_fitness():
    g = _annotated()
    dup = copy.deepcopy(g)
    assert str(dup) == str(g) and dup.fitness.values == g.fitness.values
    dup[0] = from_string("add(W, b)")[0]
    assert str(g).startswith("mul(") and str(dup).startswith("add(")


def test_genome_crosses_to_a_joblib_worker_process():
    g = _annotated()
    try:
        out = joblib.Parallel(n_jobs=2)(
            [
                joblib.delayed(str)(g),
                joblib.delayed(attrgetter("fitness.values"))(g),
                joblib.delayed(attrgetter("fingerprint", "canonical"))(g),
                joblib.delayed(to_names)(g),
                joblib.delayed(type)(g),
            ]
        )
    finally:
        get_reusable_executor().shutdown(wait=True)  # do not leave our workers running
    assert out[0] == str(g)
    assert tuple(out[1]) == (0.375,)
    assert tuple(out[2]) == (g.fingerprint, g.canonical)
    assert out[3] == to_names(g)
    assert out[4] is Genome


# --------------------------------------------------------------------------- generators


def _branch_lengths(g: Genome) -> list[int]:
    """Unary-op counts of the two branches of a branched genome (asserting its template)."""
    assert g[0].arity == 2
    counts, i = [], 1
    for _ in range(2):
        k = 0
        while g[i].arity == 1:
            k, i = k + 1, i + 1
        assert g[i].arity == 0, f"branch of {g} does not end in an input"
        counts.append(k)
        i += 1
    assert i == len(g), f"{g} has nodes after its two branches"
    return counts


@pytest.mark.parametrize("max_unary", [1, 3, 5])
def test_gen_branched_template(max_unary):
    rng, sampler = random.Random(max_unary), OperationSampler()
    seen = set()
    for _ in range(200):
        counts = _branch_lengths(gen_branched(sampler, rng, max_unary=max_unary))
        assert all(1 <= k <= max_unary for k in counts)
        seen.update(counts)
    assert seen == set(range(1, max_unary + 1))


@pytest.mark.parametrize("low, high", [(2, 5), (3, 3), (1, 4)])
def test_gen_tree_respects_height_bounds(low, high):
    rng, sampler = random.Random(low * 10 + high), OperationSampler()
    heights = [gen_tree(sampler, rng, low, high).height for _ in range(300)]
    assert min(heights) >= low and max(heights) <= high
    assert set(heights) == set(range(low, high + 1))


@pytest.mark.parametrize("generator", [gen_branched, gen_tree])
def test_generators_are_deterministic_for_a_seeded_rng(generator):
    def draw(seed: int) -> list[str]:
        random.seed(seed + 1000)  # the global RNG must not matter
        rng, sampler = random.Random(seed), OperationSampler()
        return [str(generator(sampler, rng)) for _ in range(50)]

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


# --------------------------------------------------------------------------- variation


def test_make_toolbox_rejects_unknown_generator():
    with pytest.raises(ValueError, match="'grow'"):
        make_toolbox(OperationSampler(), random.Random(0), generator="grow")


@pytest.mark.parametrize("generator", ["branched", "tree"])
def test_toolbox_individual_uses_the_named_generator(generator):
    tb = make_toolbox(OperationSampler(), random.Random(0), generator=generator)
    for _ in range(20):
        g = tb.individual()
        assert isinstance(g, Genome) and _is_valid(g)
        if generator == "branched":
            _branch_lengths(g)


def _pool(rng: random.Random, sampler: OperationSampler, n: int, max_height: int) -> list:
    return [gen_tree(sampler, rng, 1, max_height) for _ in range(n)]


def test_toolbox_mate_never_exceeds_max_height():
    rng, sampler, max_height = random.Random(5), OperationSampler(), 4
    tb = make_toolbox(sampler, rng, generator="tree", max_height=max_height)
    pool = _pool(rng, sampler, 40, max_height)
    replaced = 0
    for _ in range(400):
        a, b = rng.sample(pool, 2)
        before = {str(a), str(b)}
        children = tb.mate(copy.deepcopy(a), copy.deepcopy(b))
        for child in children:
            assert child.height <= max_height, str(child)
            assert _is_valid(child)
            replaced += str(child) in before
        pool[rng.randrange(len(pool))] = children[0]
    assert replaced > 0  # the limit was actually hit and a parent kept


def test_toolbox_mutate_never_exceeds_max_height():
    rng, sampler, max_height = random.Random(6), OperationSampler(), 4
    tb = make_toolbox(sampler, rng, generator="tree", max_height=max_height)
    heights = []
    for start in _pool(rng, sampler, 10, max_height):
        ind = start
        for _ in range(40):  # a lineage: repeated insertions would grow without the limit
            (ind,) = tb.mutate(ind)
            assert ind.height <= max_height, str(ind)
            assert _is_valid(ind)
            heights.append(ind.height)
    assert max(heights) == max_height


def _variation_run(seed: int, global_seed: int, op: str) -> list[str]:
    """Offspring texts of a seeded toolbox; the global ``random`` state is set differently."""
    random.seed(global_seed)
    rng, sampler = random.Random(seed), OperationSampler()
    tb = make_toolbox(sampler, rng, generator="tree", max_height=4)
    pool = _pool(rng, sampler, 30, 4)
    out = []
    for _ in range(300):
        a, b = rng.sample(pool, 2)
        if op == "mate":
            children = tb.mate(copy.deepcopy(a), copy.deepcopy(b))
        else:
            children = tb.mutate(copy.deepcopy(a))
        out.extend(str(c) for c in children)
    return out


def test_toolbox_mutate_is_deterministic_given_the_rng_seed():
    assert _variation_run(3, 1, "mutate") == _variation_run(3, 2, "mutate")
    assert _variation_run(3, 1, "mutate") != _variation_run(4, 1, "mutate")


def test_toolbox_mate_is_deterministic_given_the_rng_seed():
    # Same seed, different global ``random`` state: the offspring must not change.
    assert _variation_run(3, 1, "mate") == _variation_run(3, 2, "mate")
    assert _variation_run(3, 1, "mate") != _variation_run(4, 1, "mate")


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
def test_each_mutation_gives_a_valid_tree(mutation):
    rng, sampler = random.Random(9), OperationSampler()
    changed = 0
    for g in _genomes(150, seed=2, enabled=True):
        before = str(g)
        (out,) = mutation(g, sampler, rng)
        assert isinstance(out, Genome)
        assert _is_valid(out), f"{mutation.__name__}({before}) -> invalid {list(out)}"
        changed += str(out) != before
    assert changed > 100


def test_mutation_specific_shapes():
    rng, sampler = random.Random(4), OperationSampler()
    for g in _genomes(100, seed=3):
        names, arities = to_names(g), [n.arity for n in g]
        (p,) = mut_point(copy.deepcopy(g), sampler, rng)
        assert [n.arity for n in p] == arities
        assert sum(a != b for a, b in zip(to_names(p), names, strict=True)) <= 1
        (i,) = mut_insert(copy.deepcopy(g), sampler, rng)
        assert len(i) == len(g) + 1 and i.height <= g.height + 1
        (s,) = mut_shrink(copy.deepcopy(g), sampler, rng)
        assert len(s) < len(g) and s.height <= g.height


def test_mut_shrink_of_a_lone_input_stays_an_input():
    rng, sampler = random.Random(0), OperationSampler()
    for _ in range(20):
        (out,) = mut_shrink(from_string("W"), sampler, rng)
        assert len(out) == 1 and to_names(out)[0] in INPUT_NAMES
