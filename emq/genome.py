"""Genomes: DEAP ``gp.PrimitiveTree`` individuals over the primitives library.

A genome is a branched computation graph whose leaves are proxy inputs (``A``, ``W``, ``E``,
``b``, ...) and whose nodes are operations. Individual and fitness classes are defined here
(not with ``creator`` in ``__main__``) so genomes pickle to worker processes. Genomes are
parsed from text by our own parser, which only accepts registered names (never ``eval``).
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Sequence

from deap import base, gp

from emq.osp import OperationSampler
from emq.schemas import MAX_GENOME_HEIGHT, MAX_GENOME_NODES
from primitives.inputs import INPUT_NAMES
from primitives.operations import OPS

MAX_HEIGHT = 8


class UnknownNameError(ValueError):
    """A genome names an operation or input that is not registered."""


def _unknown(name: object, where: str) -> UnknownNameError:
    return UnknownNameError(
        f"unknown operation or input {_clip(repr(name))} in {where}: inputs are "
        f"{', '.join(INPUT_NAMES)}; "
        f"operations are {', '.join(sorted(OPS))}"
    )


class ProxyFitness(base.Fitness):
    """Single-objective fitness (Spearman@topk), maximized."""

    weights = (1.0,)


class Genome(gp.PrimitiveTree):
    """A proxy graph as a DEAP primitive tree, with a fitness and screening metadata."""

    def __init__(self, content):
        super().__init__(content)
        self.fitness = ProxyFitness()
        self.fingerprint: str | None = None
        self.canonical: str | None = None

    def __reduce__(self):
        # Pickle by text: workers rebuild the tree against their own primitive set.
        return (_rebuild, (str(self), self.fitness.values, self.fingerprint, self.canonical))


def _rebuild(text: str, values: tuple, fingerprint: str | None, canonical: str | None) -> Genome:
    tree = from_string(text)
    if values:
        tree.fitness.values = values
    tree.fingerprint, tree.canonical = fingerprint, canonical
    return tree


def _build_pset() -> gp.PrimitiveSet:
    pset = gp.PrimitiveSet("proxy", len(INPUT_NAMES))
    pset.renameArguments(**{f"ARG{i}": name for i, name in enumerate(INPUT_NAMES)})
    for name, op in sorted(OPS.items()):
        pset.addPrimitive(op.fn, op.arity, name=name)
    return pset


PSET = _build_pset()
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[(),]|\s+|.")


def _check_size(tree: Genome, where: str) -> Genome:
    """Refuse genomes too large or too deep for the recursive canonical form."""
    if len(tree) > MAX_GENOME_NODES or tree.height > MAX_GENOME_HEIGHT:
        raise ValueError(
            f"{where} has {len(tree)} nodes and height {tree.height}; EMQ takes genomes of at "
            f"most {MAX_GENOME_NODES} nodes and height {MAX_GENOME_HEIGHT}"
        )
    return tree


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_string(text: str) -> Genome:
    """Parse ``"mul(sqrt(W), b)"`` into a genome; unknown names are a clear error."""
    if not isinstance(text, str):
        raise ValueError(f"a genome must be a formula string, got {type(text).__name__}")
    if len(text) > 16 * MAX_GENOME_NODES:
        raise ValueError(f"genome {_clip(text)!r} is {len(text)} characters long; too large")
    nodes, stack = [], []  # stack: remaining argument counts of open primitives
    for tok in _TOKEN.findall(text):
        if tok.isspace() or tok in "(),":
            continue
        if tok in OPS:
            node = PSET.mapping[tok]
        elif tok in INPUT_NAMES:
            node = PSET.mapping[tok]
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
            raise _unknown(tok, f"genome {_clip(text)!r}")
        else:
            raise ValueError(f"unexpected character {tok!r} in genome {_clip(text)!r}")
        if stack:
            stack[-1] -= 1
        nodes.append(node)
        if node.arity:
            stack.append(node.arity)
        while stack and stack[-1] == 0:
            stack.pop()
    if not nodes or stack:
        raise ValueError(f"genome {_clip(text)!r} is incomplete")
    tree = Genome(nodes)
    if str(tree).replace(" ", "") != re.sub(r"\s+", "", text):
        raise ValueError(f"genome {_clip(text)!r} is malformed (parsed as {_clip(str(tree))})")
    return _check_size(tree, f"genome {_clip(text)!r}")


def from_names(names: Sequence[str]) -> Genome:
    """Build a genome from its prefix list of operation/input names (the JSON form)."""
    if len(names) > MAX_GENOME_NODES:
        raise ValueError(f"genome has {len(names)} names; at most {MAX_GENOME_NODES} are taken")
    nodes = []
    for name in names:
        if not isinstance(name, str) or name not in PSET.mapping:
            raise _unknown(name, "genome")
        nodes.append(PSET.mapping[name])
    open_slots = 1  # a prefix expression fills exactly one slot, and only at its end
    for i, node in enumerate(nodes):
        if open_slots == 0:
            raise ValueError(f"genome {_clip(str(list(names)))} is not a valid prefix expression")
        open_slots += node.arity - 1
        if open_slots == 0 and i != len(nodes) - 1:
            raise ValueError(f"genome {_clip(str(list(names)))} is not a valid prefix expression")
    if open_slots != 0:
        raise ValueError(
            f"genome {_clip(str(list(names)))} is not a valid prefix expression (incomplete)"
        )
    return _check_size(Genome(nodes), "genome")


def to_names(tree: gp.PrimitiveTree) -> list[str]:
    """The prefix list of names of a genome (the JSON form)."""
    return [node_name(node) for node in tree]


def node_name(node: gp.Primitive | gp.Terminal) -> str:
    """Registered name of a node (input name for terminals, operation name otherwise)."""
    return node.value if node.arity == 0 else node.name


def terminal(name: str) -> gp.Terminal:
    return PSET.mapping[name]


def primitive(name: str) -> gp.Primitive:
    return PSET.mapping[name]


# --------------------------------------------------------------------------- generators


def gen_branched(sampler: OperationSampler, rng: random.Random, max_unary: int = 3) -> Genome:
    """EMQ's branched template: two branches ``input -> unary ops``, joined by a binary op."""
    nodes = [primitive(sampler.binary(rng))]
    for _ in range(2):
        for _ in range(rng.randint(1, max_unary)):
            nodes.append(primitive(sampler.unary(rng)))
        nodes.append(terminal(sampler.terminal(rng)))
    return Genome(nodes)


def gen_tree(
    sampler: OperationSampler, rng: random.Random, min_height: int = 2, max_height: int = 5
) -> Genome:
    """A general tree of height in ``[min_height, max_height]`` (grow method)."""
    height = rng.randint(min_height, max_height)
    return Genome(_grow(sampler, rng, height, min_height))


def _grow(sampler: OperationSampler, rng: random.Random, depth: int, min_depth: int) -> list:
    if depth == 0 or (min_depth <= 0 and rng.random() < 0.3):
        return [terminal(sampler.terminal(rng))]
    if rng.random() < 0.35:
        left = _grow(sampler, rng, depth - 1, min_depth - 1)
        right = _grow(sampler, rng, depth - 1, min_depth - 1)
        return [primitive(sampler.binary(rng)), *left, *right]
    return [primitive(sampler.unary(rng)), *_grow(sampler, rng, depth - 1, min_depth - 1)]


GENERATORS: dict[str, Callable[..., Genome]] = {"branched": gen_branched, "tree": gen_tree}


# --------------------------------------------------------------------------- variation


def mut_point(ind: Genome, sampler: OperationSampler, rng: random.Random) -> tuple[Genome]:
    """Replace one node by another of the same arity, drawn with the sampler's weights."""
    i = rng.randrange(len(ind))
    node = ind[i]
    if node.arity == 0:
        ind[i] = terminal(sampler.terminal(rng))
    else:
        ind[i] = primitive(sampler.unary(rng) if node.arity == 1 else sampler.binary(rng))
    return (ind,)


def mut_subtree(ind: Genome, sampler: OperationSampler, rng: random.Random) -> tuple[Genome]:
    """Replace a random subtree by a freshly grown one (height 1..3)."""
    i = rng.randrange(len(ind))
    span = ind.searchSubtree(i)
    ind[span] = _grow(sampler, rng, rng.randint(1, 3), 1)
    return (ind,)


def mut_insert(ind: Genome, sampler: OperationSampler, rng: random.Random) -> tuple[Genome]:
    """Insert a unary operation above a random node."""
    i = rng.randrange(len(ind))
    span = ind.searchSubtree(i)
    ind[span] = [primitive(sampler.unary(rng)), *ind[span]]
    return (ind,)


def mut_shrink(ind: Genome, sampler: OperationSampler, rng: random.Random) -> tuple[Genome]:
    """Replace a random operation node by one of its operands (the tree gets smaller)."""
    prims = [i for i, n in enumerate(ind) if n.arity > 0]
    if not prims:
        return mut_point(ind, sampler, rng)
    i = rng.choice(prims)
    span = ind.searchSubtree(i)
    children, j = [], i + 1
    for _ in range(ind[i].arity):
        sub = ind.searchSubtree(j)
        children.append(ind[sub])
        j = sub.stop
    ind[span] = rng.choice(children)
    return (ind,)


MUTATIONS = (mut_point, mut_subtree, mut_insert, mut_shrink)


def mutate(ind: Genome, sampler: OperationSampler, rng: random.Random) -> tuple[Genome]:
    """One of the mutations above, chosen uniformly."""
    return rng.choice(MUTATIONS)(ind, sampler, rng)


def crossover(a: Genome, b: Genome, rng: random.Random) -> tuple[Genome, Genome]:
    """One-point subtree crossover (as ``gp.cxOnePoint``, with an explicit RNG)."""
    if len(a) < 2 or len(b) < 2:
        return a, b
    i, j = rng.randrange(1, len(a)), rng.randrange(1, len(b))
    sa, sb = a.searchSubtree(i), b.searchSubtree(j)
    a[sa], b[sb] = b[sb], a[sa]
    return a, b


def make_toolbox(
    sampler: OperationSampler,
    rng: random.Random,
    generator: str = "branched",
    max_height: int = MAX_HEIGHT,
) -> base.Toolbox:
    """A DEAP toolbox with ``individual``, ``mate`` and ``mutate`` registered.

    Variation operators are wrapped in ``gp.staticLimit`` so no offspring exceeds
    ``max_height``.
    """
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}: expected one of {list(GENERATORS)}")
    tb = base.Toolbox()
    tb.register("individual", GENERATORS[generator], sampler, rng)
    tb.register("mate", crossover, rng=rng)
    tb.register("mutate", mutate, sampler=sampler, rng=rng)
    tb.decorate("mate", height_limit(max_height))
    tb.decorate("mutate", height_limit(max_height))
    return tb


def height_limit(max_height: int):
    """Like ``gp.staticLimit``, but deterministic: an offspring taller than ``max_height``
    is replaced by a copy of the parent in its position (DEAP draws the replacement with
    the global ``random`` module, which would break seeded reproducibility)."""

    def decorator(func):
        def wrapper(*args, **kwargs):
            keep = [copy.deepcopy(ind) for ind in args]
            new = list(func(*args, **kwargs))
            for i, ind in enumerate(new):
                if ind.height > max_height:
                    new[i] = keep[i]
            return tuple(new)

        return wrapper

    return decorator
