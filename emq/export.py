"""Export a proxy as a standalone Python module, a JSON form and a formula.

The Python module needs only torch and numpy: the source of each operation the proxy uses
is copied from the registry, so exported and in-engine scores are computed by the same
code and agree exactly. The JSON form names operations and inputs (``emq.proxy`` reads it
back; ``emq.scorers.resolve_scorer`` turns any name or path into a Scorer).
"""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

from emq import __version__
from emq.genome import from_names
from emq.graph import Expr, canonical, expr_str, joint_operand, ops_used
from emq.proxy import load_proxy_document, proxy_document, read_best
from emq.scoring import reduce_to_bits
from primitives import operations
from primitives.inputs import INPUT_DOCS
from primitives.operations import OPS

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
    joint = _joint_code(expr) if doc.get("combine") == "joint" else ""
    joint_note = (
        "\nThis proxy combines layers jointly: ``joint_scores`` scores configurations with the "
        "layers'\nterms added before the norm (the table is its diagonal, what allocators take)."
        if joint
        else ""
    )
    inputs = ", ".join(f"{n} ({INPUT_DOCS[n]})" for n in doc["inputs"])
    # Metadata (any JSON value: null, nested reports, paths) reaches the module as one string
    # literal parsed at import, never as Python source.
    meta = json.dumps({k: doc[k] for k in doc if k not in ("genome",)}, indent=1)
    return f'''"""EMQ proxy, exported by emq {__version__}. Needs only torch and numpy.

Formula: {doc["formula"]}

Each layer's inputs are float32 tensors with a leading bit axis (size B for the bit-dependent
inputs, 1 for the others): {inputs}.
``score_table`` evaluates the proxy once per layer on all bit options, giving ``S[l, b]``;
a configuration's score is ``sum_l S[l, b_l]`` (higher = expected more accurate).{joint_note}
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
{joint}'''


def _joint_code(expr: Expr) -> str:
    """The exported module's joint combination (``emq.graph.joint_scores``) of a proxy
    ``revert(sq_norm(X))``: ``layer_terms`` computes ``X``, ``joint_scores`` adds them."""
    body, result = _expr_code(joint_operand(expr))
    return f'''

def layer_terms(inputs: dict) -> Tensor:
    """{expr_str(joint_operand(expr))} on one layer's inputs (float64), [bits or 1, ...]."""
    inputs = {{k: torch.as_tensor(v).double() for k, v in inputs.items()}}
    with torch.no_grad():
{chr(10).join("    " + line for line in body)}
        return {result}


# the weight of the cross-layer terms (METADATA["cross"]; 1: the full joint form)
CROSS = float(METADATA.get("cross", 1.0))


def joint_scores(layers: list, bit_index: np.ndarray) -> np.ndarray:
    """This proxy's combination (METADATA["combine"] == "joint"): configuration scores
    ``-[(1 - CROSS) sum_l |X_l[b_l]|^2 + CROSS |sum_l X_l[b_l]|^2]`` for candidate indices
    ``[N, L]``: the layers' terms added before the norm, their cross-layer products weighted
    by ``CROSS`` (its table is the diagonal; a bit-independent term counts at every bit)."""
    terms = [layer_terms(t) for t in layers]
    bit_index = torch.as_tensor(np.atleast_2d(np.asarray(bit_index, dtype=np.int64)))
    if bit_index.shape[1] != len(terms):
        raise ValueError(f"configurations have {{bit_index.shape[1]}} layers, not {{len(terms)}}")
    total = torch.zeros((len(bit_index), *terms[0].shape[1:]), dtype=torch.float64)
    diagonal = torch.zeros(len(bit_index), dtype=torch.float64)
    for layer, term in enumerate(terms):
        part = term[bit_index[:, layer] if term.shape[0] > 1 else 0]
        total += part
        diagonal += torch.square(part).reshape(len(bit_index), -1).sum(1)
    full = torch.square(total).reshape(len(bit_index), -1).sum(1)
    return (-(CROSS * full + (1.0 - CROSS) * diagonal)).numpy()
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


def export_document(doc: dict, out: Path | str, source: str = "proxy") -> dict[str, Path]:
    """Export a proxy JSON document (``emq/default_proxy.json``, an exported ``.json``) again
    as ``<name>.py``, ``.json`` and ``.txt`` in ``out``, its fields (``combine``,
    ``description``, ...) kept; validated first (``load_proxy_document``)."""
    scorer = load_proxy_document(doc, source)
    name = str(doc.get("name") or "proxy")
    if not name.isidentifier():
        raise ValueError(f"{source}: name {name!r} cannot name a module; rename it in the file")
    skip = {"format", "format_version", "library_version", "formula", "genome", "inputs", "name"}
    extra = {k: v for k, v in doc.items() if k not in skip}
    return export_proxy(scorer.expr, out, name, **extra)


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
        "combine": info.get("combine", "table"),
        **({"cross": info.get("cross", 1.0)} if info.get("combine") == "joint" else {}),
    }
    return export_proxy(canonical(tree), out or run, "best_proxy", **extra)
