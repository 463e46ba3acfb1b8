"""Quantizer groups: layers whose weights and input activations share one (w, a) choice.

A group is a frozen dataclass of layer names and allowed ``(w_bits, a_bits)`` candidates
(AIMET AMP, Pandey et al. 2023, "Quantizer Groups"). By default every quantizable layer is
its own group with the candidates ``W{b}A8`` for ``b`` in the bench's weight candidates.
User groups come from a JSON file::

    {"groups": [{"layers": ["conv1", "layer1.0.conv1"], "candidates": ["W4A8", "W8A8"]},
                {"layers": ["fc"], "candidates": [[8, 8], [8, 16]]}]}

Layers not named by any group get a group of their own with ``default_candidates`` (the
file may set ``"default_candidates"``). Every layer belongs to exactly one group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.ptq import DEFAULT_BITS, SUPPORTED_BITS
from emq.schemas import GROUPS_SCHEMA, read_document

Candidate = tuple[int, int]  # (weight bits, activation bits)
_CAND_TEXT = re.compile(r"^[Ww](\d+)[Aa](\d+)$")


def parse_candidate(value: object) -> Candidate:
    """``"W4A8"``, ``[4, 8]`` or ``(4, 8)`` as a ``(w, a)`` tuple; clear error otherwise."""
    if isinstance(value, str):
        match = _CAND_TEXT.match(value.strip())
        if not match:
            raise ValueError(f"candidate {value!r} is not of the form 'W<bits>A<bits>' (e.g. W4A8)")
        w, a = int(match[1]), int(match[2])
    elif isinstance(value, Sequence) and len(value) == 2:
        try:
            w, a = int(value[0]), int(value[1])
        except (TypeError, ValueError):
            raise ValueError(f"candidate {value!r} must hold two integers (w, a)") from None
    else:
        raise ValueError(f"candidate {value!r} must be 'W<w>A<a>' or a pair [w, a]")
    for what, bits in (("weight", w), ("activation", a)):
        if bits not in SUPPORTED_BITS:
            raise ValueError(
                f"candidate W{w}A{a}: {what} bit-width {bits} unsupported "
                f"(expected {SUPPORTED_BITS.start}..{SUPPORTED_BITS.stop - 1})"
            )
    return w, a


def candidate_name(cand: Candidate) -> str:
    """``(4, 8) -> "W4A8"``."""
    return f"W{cand[0]}A{cand[1]}"


def sort_candidates(cands: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """Distinct candidates from the highest cost (``w * a``) to the lowest, ties by ``w``."""
    return tuple(sorted(set(cands), key=lambda c: (-c[0] * c[1], -c[0], -c[1])))


@dataclass(frozen=True)
class QuantizerGroup:
    """Layers quantized together, and the ``(w, a)`` candidates allowed for them.

    ``candidates`` is sorted from the highest cost (``w * a``) to the lowest, so
    ``candidates[0]`` is the group's top candidate (where phase 2 starts).
    """

    name: str
    layers: tuple[int, ...]
    layer_names: tuple[str, ...]
    candidates: tuple[Candidate, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError(f"quantizer group {self.name!r} has no layer")
        if not self.candidates:
            raise ValueError(f"quantizer group {self.name!r} has no candidate")
        object.__setattr__(self, "candidates", sort_candidates(self.candidates))

    @property
    def top(self) -> Candidate:
        """The highest-cost candidate."""
        return self.candidates[0]


def default_candidates(w_bits: Sequence[int] = DEFAULT_BITS, a_bits: int = 8) -> list[Candidate]:
    """``W{b}A{a_bits}`` for each weight bit-width ``b``."""
    return [parse_candidate((int(b), a_bits)) for b in w_bits]


def default_groups(
    layer_names: Sequence[str], candidates: Sequence[Candidate] | None = None
) -> list[QuantizerGroup]:
    """One group per layer, each with ``candidates`` (default ``W{2,3,4,8}A8``)."""
    cands = [parse_candidate(c) for c in (candidates or default_candidates())]
    return [QuantizerGroup(n, (i,), (n,), tuple(cands)) for i, n in enumerate(layer_names)]


def groups_from_spec(
    spec: dict, layer_names: Sequence[str], fallback: Sequence[Candidate] | None = None
) -> list[QuantizerGroup]:
    """Validate a groups document (see the module docstring) against the model's layers."""
    if not isinstance(spec, dict) or not isinstance(spec.get("groups"), list):
        raise ValueError("a groups file must be a JSON object with a list under 'groups'")
    index = {n: i for i, n in enumerate(layer_names)}
    fallback = [parse_candidate(c) for c in spec.get("default_candidates", fallback or [])]
    fallback = fallback or default_candidates()
    groups: list[QuantizerGroup] = []
    owner: dict[str, str] = {}
    for k, entry in enumerate(spec["groups"]):
        if not isinstance(entry, dict):
            raise ValueError(f"group {k} must be an object with 'layers' and 'candidates'")
        name = str(entry.get("name", f"group{k}"))
        layers = entry.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"group {name!r}: 'layers' must be a non-empty list of layer names")
        unknown = [n for n in layers if n not in index]
        if unknown:
            raise ValueError(
                f"group {name!r} names unknown layer(s) {unknown}; the model's quantizable "
                f"layers are {list(layer_names)}"
            )
        for n in layers:
            if n in owner:
                raise ValueError(f"layer {n!r} is in both group {owner[n]!r} and {name!r}")
            owner[n] = name
        cands = entry.get("candidates", fallback)
        if not isinstance(cands, list) or not cands:
            raise ValueError(f"group {name!r}: 'candidates' must be a non-empty list")
        idx = tuple(sorted(index[n] for n in layers))
        groups.append(
            QuantizerGroup(
                name, idx, tuple(layer_names[i] for i in idx), tuple(map(parse_candidate, cands))
            )
        )
    for i, n in enumerate(layer_names):
        if n not in owner:
            groups.append(QuantizerGroup(n, (i,), (n,), tuple(fallback)))
    return sorted(groups, key=lambda g: g.layers[0])


def load_groups(
    path: Path | str, layer_names: Sequence[str], fallback: Sequence[Candidate] | None = None
) -> list[QuantizerGroup]:
    """Quantizer groups from a JSON file, validated against the model's layer names."""
    spec = read_document(path, GROUPS_SCHEMA, "groups file")
    try:
        return groups_from_spec(spec, layer_names, fallback)
    except ValueError as exc:
        raise ValueError(f"groups file {path}: {exc}") from None


def layer_bits(
    groups: Sequence[QuantizerGroup], choice: Sequence[int], num_layers: int
) -> tuple[list[int], list[int]]:
    """Per-layer ``(w_bits, a_bits)`` of a choice (candidate index per group)."""
    w, a = [0] * num_layers, [0] * num_layers
    for g, c in zip(groups, choice, strict=True):
        for i in g.layers:
            w[i], a[i] = g.candidates[c]
    if 0 in w:
        raise ValueError("the quantizer groups do not cover every layer")
    return w, a


def group_choice(
    groups: Sequence[QuantizerGroup], w_bits: Sequence[int], a_bits: Sequence[int]
) -> tuple[int, ...]:
    """The choice (candidate index per group) of per-layer bits: ``layer_bits`` inverted."""
    choice = []
    for g in groups:
        bits = {(int(w_bits[i]), int(a_bits[i])) for i in g.layers}
        if len(bits) != 1 or next(iter(bits)) not in g.candidates:
            found = ", ".join(candidate_name(b) for b in sorted(bits))
            raise ValueError(
                f"quantizer group {g.name!r} got {found}: expected one of its candidates "
                f"{', '.join(candidate_name(c) for c in g.candidates)} for all its layers"
            )
        choice.append(g.candidates.index(next(iter(bits))))
    return tuple(choice)


def group_costs(groups: Sequence[QuantizerGroup], macs: Sequence[int]) -> list[np.ndarray]:
    """Relative BOPs (vs W8A8 everywhere) contributed by each group at each candidate.

    A configuration's relative BOPs is the sum over groups, so a flip updates it in O(1).
    """
    total = 64.0 * float(np.sum(macs))
    out = []
    for g in groups:
        m = float(sum(macs[i] for i in g.layers))
        out.append(np.asarray([m * w * a / total for w, a in g.candidates]))
    return out
