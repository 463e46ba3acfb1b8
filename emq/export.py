"""Export a proxy as a standalone Python module, a JSON form and a formula; load it back.

The Python module needs only torch and numpy: the source of each operation the proxy uses
is copied from the registry, so exported and in-engine scores are computed by the same
code and agree exactly. The JSON form names operations and inputs; loading validates every
name against the registry and never ``eval``s file text.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.schemas import existing_path
from emq import __version__
from emq.genome import from_names
from emq.graph import Expr, canonical, expr_str, leaves, ops_used, prefix_names, score_table
from emq.schemas import (
    BEST_SCHEMA,
    PROXY_FORMAT,
    PROXY_FORMAT_VERSION,
    PROXY_SCHEMA,
    check_document,
    read_document,
)
from emq.scoring import ScoreContext, reduce_to_bits
from primitives import operations
from primitives.inputs import INPUT_DOCS, INPUT_NAMES
from primitives.operations import OPS

# The proxy ``emq score`` and ``emq allocate`` use unless told otherwise ("default"): the
# best proxy of the reference campaign (runs/reference), shipped inside the package so it is
# found from any working directory.
DEFAULT_PROXY = Path(__file__).resolve().parent / "default_proxy.json"
FORMAT = PROXY_FORMAT
FORMAT_VERSION = PROXY_FORMAT_VERSION


@dataclass(frozen=True)
class ProxyScorer:
    """A Scorer for an evolved proxy: ``scorer(ctx) -> S[l, b]``."""

    name: str
    expr: Expr
    measured: bool = False

    @property
    def formula(self) -> str:
        return expr_str(self.expr)

    def __call__(self, ctx: ScoreContext) -> np.ndarray:
        return score_table(self.expr, ctx.inputs)


def proxy_document(expr: Expr, **extra) -> dict:
    """The JSON form of a proxy."""
    names = prefix_names(expr)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "formula": expr_str(expr),
        "genome": names,
        "inputs": sorted({n for n in names if n in INPUT_DOCS}),
        **extra,
    }


def load_proxy_document(doc: dict, source: str = "proxy") -> ProxyScorer:
    """Validate a JSON document (``emq.schemas.PROXY_SCHEMA``, then every name against the
    registry) and build its scorer (clear errors, no eval)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{source} is not an EMQ proxy file (missing format '{FORMAT}')")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{source} has proxy format version {doc.get('format_version')!r}, "
            f"this EMQ reads version {FORMAT_VERSION}"
        )
    check_document(doc, PROXY_SCHEMA, source)
    try:
        tree = from_names(doc["genome"])
    except ValueError as exc:
        raise type(exc)(f"{source}: field 'genome': {exc}") from None
    return ProxyScorer(str(doc.get("name", source)), canonical(tree))


def needed_inputs(scorer: object) -> tuple[str, ...]:
    """Proxy inputs a scorer reads, so only those are computed (all when unknown)."""
    expr = getattr(scorer, "expr", None)
    names = leaves(expr) if expr is not None else getattr(scorer, "inputs", None)
    if names is None:
        return INPUT_NAMES
    return tuple(n for n in INPUT_NAMES if n in set(names)) or ("W",)


def load_proxy(spec: str | Path):
    """A Scorer from a proxy JSON file, a run folder (its ``best.json``), a baseline name, or
    ``"default"`` (the shipped default proxy, evolved on the zoo: ``DEFAULT_PROXY``)."""
    from emq.baselines import BASELINES, get_baseline

    if isinstance(spec, str) and spec in BASELINES:
        return get_baseline(spec)
    path = DEFAULT_PROXY if spec == "default" else existing_path(spec)
    if path is not None and path.is_dir():
        return _best_proxy(path / "best.json")
    if path is None or not path.is_file():
        shown = str(spec) if len(str(spec)) <= 80 else str(spec)[:77] + "..."
        raise ValueError(
            f"proxy {shown!r} is neither a file nor a baseline name "
            f"(baselines: {', '.join(sorted(BASELINES))})"
        )
    from benchmark.schemas import read_json

    doc = read_json(path, "proxy file")
    if isinstance(doc, dict) and "format" not in doc and "genome_names" in doc:
        return _best_proxy(path, doc)
    return load_proxy_document(doc, f"proxy file {path}")


def _read_best(path: Path, doc: dict | None = None) -> dict:
    """A campaign's ``best.json``, validated (``emq.schemas.BEST_SCHEMA``, then its genome
    against the registry)."""
    if doc is None:
        doc = read_document(path, BEST_SCHEMA, "best proxy file")
    else:
        check_document(doc, BEST_SCHEMA, f"best proxy file {path}")
    try:
        from_names(doc["genome_names"])
    except ValueError as exc:
        raise type(exc)(f"best proxy file {path}: field 'genome_names': {exc}") from None
    return doc


def read_best(run: Path) -> dict:
    """A run folder's validated ``best.json`` (a clear error if it has none)."""
    best = run / "best.json"
    if not best.exists() and not best.is_symlink():
        raise ValueError(f"{run} has no best.json: run 'emq evolve --run {run}' first")
    return _read_best(best)


def _best_proxy(path: Path, doc: dict | None = None) -> ProxyScorer:
    """The proxy of a campaign's ``best.json`` (its canonical genome is under genome_names)."""
    info = _read_best(path, doc)
    proxy = {"format": FORMAT, "format_version": FORMAT_VERSION, "genome": info["genome_names"]}
    return load_proxy_document(proxy, f"best proxy file {path}")


# --------------------------------------------------------------------------- python module

_HELPERS = ("_slots", "_samples", "_aligned", "_zero_where", "_as_matrix")
_PRELUDE = '''\
import json
import math

import numpy as np
import torch
from torch import Tensor

Shape = tuple


class ShapeError(ValueError):
    """Operand shapes do not fit the proxy (the layer inputs differ from the exported ones)."""


def BROADCAST(*shapes):
    """Shapes were checked when the proxy was screened; torch raises on a mismatch."""


def MATMUL(*shapes):
    """Shapes were checked when the proxy was screened; torch raises on a mismatch."""
'''


def _source(fn) -> str:
    lines = inspect.getsource(fn).splitlines()
    while lines and lines[0].startswith("@"):
        lines = lines[1:]
    return textwrap.dedent("\n".join(lines))


def _expr_code(expr: Expr) -> tuple[list[str], str]:
    """Straight-line code computing the expression, each subexpression once."""
    lines: list[str] = []
    names: dict[str, str] = {}

    def walk(e: Expr) -> str:
        if isinstance(e, str):
            return f"inputs[{e!r}]"
        key = expr_str(e)
        if key not in names:
            args = ", ".join(walk(c) for c in e[1:])
            names[key] = f"t{len(names)}"
            lines.append(f"    {names[key]} = {OPS[e[0]].fn.__name__}({args})  # {e[0]}")
        return names[key]

    return lines, walk(expr)


def python_module(expr: Expr, doc: dict) -> str:
    """Source of a standalone module (torch + numpy only) for the proxy."""
    used = sorted(ops_used(expr))
    op_src = "\n\n\n".join(_source(OPS[n].fn) for n in used)
    helpers = "\n\n\n".join(_source(getattr(operations, h)) for h in _HELPERS)
    body, result = _expr_code(expr)
    inputs = ", ".join(f"{n} ({INPUT_DOCS[n]})" for n in doc["inputs"])
    # Metadata (any JSON value: null, nested reports, paths) reaches the module as one string
    # literal parsed at import, never as Python source.
    meta = json.dumps({k: doc[k] for k in doc if k not in ("genome",)}, indent=1)
    return f'''"""EMQ proxy, exported by emq {__version__}. Needs only torch and numpy.

Formula: {doc["formula"]}

Each layer's inputs are float32 tensors with a leading bit axis (size B for the bit-dependent
inputs, 1 for the others): {inputs}.
``score_table`` evaluates the proxy once per layer on all bit options, giving ``S[l, b]``;
a configuration's score is ``sum_l S[l, b_l]`` (higher = expected more accurate).
"""

{_PRELUDE}

FORMULA = {doc["formula"]!r}
INPUTS = {tuple(doc["inputs"])!r}
METADATA = json.loads({meta!r})


{helpers}


{op_src}


{_source(reduce_to_bits)}


def layer_scores(inputs: dict, num_bits: int) -> Tensor:
    """The proxy on one layer's inputs: one score per bit option, shape [num_bits].

    Computed in float64, as in EMQ (scores then agree to the last bit).
    """
    inputs = {{k: torch.as_tensor(v).double() for k, v in inputs.items()}}
    with torch.no_grad():
{chr(10).join("    " + line for line in body)}
        return reduce_to_bits({result}, num_bits)


def score_table(layers: list, num_bits: int) -> np.ndarray:
    """``S[l, b]`` (float64) for a list of per-layer input dicts."""
    return torch.stack([layer_scores(t, num_bits) for t in layers]).numpy()


def score_configs(table: np.ndarray, bit_index: np.ndarray) -> np.ndarray:
    """Scores of configurations given as candidate indices ``[N, L]``: a gather and a sum."""
    bit_index = np.asarray(bit_index)
    if bit_index.ndim != 2 or bit_index.shape[1] != table.shape[0]:
        raise ValueError(
            f"configurations have {{bit_index.shape[-1]}} layers, the table has {{table.shape[0]}}"
        )
    return table[np.arange(table.shape[0]), bit_index].sum(1)


def score_bits(table: np.ndarray, configs, candidates) -> np.ndarray:
    """Scores of configurations given as bit-widths ``[N, L]`` among ``candidates``."""
    lut = {{int(b): i for i, b in enumerate(candidates)}}
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    bad = sorted(set(np.unique(configs).tolist()) - set(lut))
    if bad:
        raise ValueError(f"bit-width(s) {{bad}} not among the candidates {{list(candidates)}}")
    return score_configs(table, np.vectorize(lut.__getitem__)(configs))
'''


def export_proxy(expr: Expr, out: Path | str, name: str = "proxy", **extra) -> dict[str, Path]:
    """Write ``<name>.py``, ``<name>.json`` and ``<name>.txt`` (formula) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = proxy_document(expr, name=name, **extra)
    paths = {"py": out / f"{name}.py", "json": out / f"{name}.json", "formula": out / f"{name}.txt"}
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    paths["py"].write_text(python_module(expr, doc))
    paths["formula"].write_text(doc["formula"] + "\n")
    return paths


def export_run(run: Path | str, out: Path | str | None = None) -> dict[str, Path]:
    """Export the best proxy of a campaign folder (default: into the run folder)."""
    info = read_best(Path(run))
    run, tree = Path(run), from_names(info["genome_names"])
    extra = {
        "fitness_search": info.get("fitness_search"),
        "heldout": info.get("heldout"),
        "bench_fingerprint": info.get("bench_fingerprint"),
        "candidates": info.get("bench_fingerprint", {}).get("candidates"),
        "run": str(run),
    }
    return export_proxy(canonical(tree), out or run, "best_proxy", **extra)
