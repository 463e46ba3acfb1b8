"""Files users hand us, checked at the door: strict JSON with limits, then a JSON Schema.

Every file EMQ reads that may come from someone else (bench files here; proxies, run
folders and quantizer groups in ``emq.schemas``) goes through ``parse_json`` (size and
nesting limits before the parser runs, no ``NaN``/``Infinity``) and ``check`` (a
``jsonschema`` validator). A refusal is a ``FileFormatError`` (a ``ValueError``) that names
the file, the field and what was expected, on one line. The schemas of the bench file live
here; ``benchmark/`` imports nothing of ``emq/``, so ``emq.schemas`` builds on this module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from benchmark.quantizers import SUPPORTED_BITS

# Limits applied before parsing: far above anything EMQ writes (a 150-step checkpoint is
# 0.4 MB and 4 levels deep), far below what would exhaust memory or the recursion limit.
MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 32
MAX_TEXT = 4096  # longest string field we accept (formulas, names, paths)

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class FileFormatError(ValueError):
    """A user-supplied file is not what EMQ expects (names the file, field and fix)."""


def json_depth(data: bytes) -> int:
    """Nesting depth of JSON text (``{}`` and ``[]``, strings skipped), without parsing it."""
    brackets = _BRACKETS.findall(_STRING.sub(b'""', data))
    if not brackets:
        return 0
    steps = np.fromiter((1 if b in (b"[", b"{") else -1 for b in brackets), np.int8)
    return int(np.cumsum(steps, dtype=np.int64).max())


def _refuse_constant(source: str):
    def refuse(name: str) -> Any:
        raise FileFormatError(
            f"{source} contains {name}, which is not a finite JSON number; write finite "
            "numbers (or null)"
        )

    return refuse


def parse_json(
    data: bytes | str,
    source: str,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Strict JSON: size and depth checked first, ``NaN``/``Infinity`` refused."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise FileFormatError(
            f"{source} is {len(raw):,} bytes, more than the {max_bytes:,} EMQ reads"
        )
    depth = json_depth(raw)
    if depth > max_depth:
        raise FileFormatError(
            f"{source} is nested {depth} levels deep; EMQ reads at most {max_depth}"
        )
    try:
        refuse = _refuse_constant(source)
        return json.loads(
            raw.decode("utf-8-sig"),  # a byte-order mark (Windows editors) is no error
            parse_constant=refuse,
            parse_float=lambda t: v if math.isfinite(v := float(t)) else refuse(t),
        )
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{source} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:  # defensive: the depth check should have caught it
        raise FileFormatError(f"{source} is nested too deeply") from None


def read_text(path: Path | str, what: str, max_bytes: int = MAX_JSON_BYTES) -> str:
    """A user's UTF-8 text file; a directory, missing, huge or binary file is a clear error."""
    path = Path(path)
    data = _read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is no error
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{what} {path} is not UTF-8 text ({exc.reason})") from None


def read_json(path: Path | str, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read and ``parse_json`` a file; a directory, missing or huge file is a clear error."""
    path = Path(path)
    return parse_json(_read_bytes(path, what, max_bytes), f"{what} {path}", max_bytes)


def _read_bytes(path: Path, what: str, max_bytes: int) -> bytes:
    if not path.exists():
        raise FileFormatError(f"{what} {path} does not exist")
    if not path.is_file():
        raise FileFormatError(f"{what} {path} is not a regular file (a directory?)")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FileFormatError(
                f"{what} {path} is {size:,} bytes, more than the {max_bytes:,} EMQ reads"
            )
        return path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def existing_path(text: str | Path) -> Path | None:
    """``text`` as a path if it names an existing file or folder, else None.

    Safe on any text (an inline value tried as a path first): a name too long for the
    file system, or with a NUL byte, is simply not a path.
    """
    try:
        path = Path(text)
        return path if path.exists() else None
    except (OSError, ValueError):
        return None


def _is_integer(checker: object, instance: object) -> bool:
    # Stricter than JSON Schema, where 1.0 is an integer: a count, index or bit-width
    # written 1.0 is a mistake and would break indexing downstream.
    return isinstance(instance, int) and not isinstance(instance, bool)


@cache
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    base.check_schema(schema)
    checker = base.TYPE_CHECKER.redefine("integer", _is_integer)
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(error: jsonschema.ValidationError) -> str:
    """One line: the field's path, what is wrong, and what the schema expects there."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    field = f"field '{path.lstrip('.')}'" if path else "the top level"
    validator = error.validator
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        what = f"is missing '{missing}'"
    elif validator == "additionalProperties":
        what = error.message.replace("Additional properties are not allowed", "has unknown key(s)")
    elif validator in ("type", "enum", "const", "pattern", "minimum", "maximum",
                       "exclusiveMinimum", "exclusiveMaximum"):  # fmt: skip
        what = f"is {_short(error.instance)}"
    elif validator in ("minItems", "maxItems", "maxProperties", "minProperties"):
        what = f"has {len(error.instance)} {'items' if 'Items' in validator else 'keys'}"
    elif validator in ("minLength", "maxLength"):
        what = f"has {len(error.instance)} characters"
    elif validator == "uniqueItems":
        what = "has repeated items"
    else:
        what = f"is invalid ({error.message[:160]})"
    described = error.schema.get("description") if isinstance(error.schema, Mapping) else None
    expected = described or _expectation(error)
    text = f"{field} {what}; expected {expected}"
    return " ".join(text.split())


def _expectation(error: jsonschema.ValidationError) -> str:
    v, s = error.validator, error.validator_value
    return {
        "type": f"type {s}" if isinstance(s, str) else f"one of the types {s}",
        "enum": f"one of {s}",
        "const": _short(s),
        "minimum": f"a number >= {s}",
        "maximum": f"a number <= {s}",
        "exclusiveMinimum": f"a number > {s}",
        "exclusiveMaximum": f"a number < {s}",
        "minItems": f"at least {s} item(s)",
        "maxItems": f"at most {s} items",
        "minLength": f"at least {s} character(s)",
        "maxLength": f"at most {s} characters",
        "pattern": f"text matching {s}",
        "uniqueItems": "distinct items",
    }.get(v, f"a value satisfying '{v}'")


def check(doc: Any, schema: dict, source: str) -> Any:
    """Validate ``doc`` against ``schema``; ``FileFormatError`` naming ``source`` and field."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        raise FileFormatError(f"{source}: {describe(error)}")
    return doc


# --------------------------------------------------------------------------- building blocks


def integer(minimum: int | None = None, maximum: int | None = None, description: str = ""):
    """Schema of an integer in ``[minimum, maximum]`` (JSON ``true`` is not an integer)."""
    s: dict = {"type": "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if description:
        s["description"] = description
    return s


def number(minimum: float, maximum: float, description: str = "") -> dict:
    """Schema of a (finite: ``parse_json`` refuses NaN/Infinity) number in a closed range."""
    s: dict = {"type": "number", "minimum": minimum, "maximum": maximum}
    if description:
        s["description"] = description
    return s


def text(max_length: int = MAX_TEXT, description: str = "", min_length: int = 0) -> dict:
    s: dict = {"type": "string", "maxLength": max_length, "minLength": min_length}
    if description:
        s["description"] = description
    return s


# --------------------------------------------------------------------------- the bench file

SCHEMA_VERSION = 1
BITS = integer(
    SUPPORTED_BITS.start, SUPPORTED_BITS.stop - 1,
    f"a bit-width, an integer from {SUPPORTED_BITS.start} to {SUPPORTED_BITS.stop - 1}",
)  # fmt: skip
MAX_LAYERS = 4096
MAX_ROWS = 2_000_000

ADAROUND_SCHEMA = {
    "type": "object",
    "description": "AdaRound settings {iterations, lr, reg_weight, beta_start, beta_end, "
    "warm_up, batch_size, images, seed} (benchmark.adaround.AdaRoundSettings)",
    "additionalProperties": False,
    "properties": {
        "iterations": integer(1, 10**9, "AdaRound Adam steps, an integer >= 1"),
        "lr": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1e6,
            "description": "the AdaRound learning rate, a number > 0",
        },
        "reg_weight": number(0, 1e6, "the rounding-regularizer weight, a number >= 0"),
        "beta_start": number(0, 1e6, "a number >= 0"),
        "beta_end": number(0, 1e6, "a number >= 0"),
        "warm_up": {
            "type": "number",
            "minimum": 0,
            "exclusiveMaximum": 1,
            "description": "the warm-up fraction, in [0, 1)",
        },
        "batch_size": integer(1, 10**6, "an integer >= 1"),
        "images": integer(1, 10**7, "calibration images, an integer >= 1"),
        "seed": integer(0, 2**32 - 1, "an integer seed >= 0"),
    },
}

QUANTIZER_SCHEMA = {
    "type": "object",
    "description": "the quantizer settings the bench was measured with",
    "required": ["rounding"],
    "properties": {
        "rounding": {"enum": ["nearest", "adaround"], "description": "'nearest' or 'adaround'"},
        "clip_grid": integer(1, 100_000, "clip-ratio grid size, an integer >= 1"),
        "calib_images": integer(1, 10_000_000, "calibration images, an integer >= 1"),
        "calib_seed": integer(description="an integer seed"),
        "adaround": ADAROUND_SCHEMA,
    },
}

LAYER_SCHEMA = {
    "type": "object",
    "description": "a layer: {name, kind, params, macs, ...}",
    "required": ["name", "kind", "params", "macs"],
    "properties": {
        "name": text(400, "the layer's module name", 1),
        "kind": {"enum": ["Conv2d", "Linear"], "description": "'Conv2d' or 'Linear'"},
        "params": integer(1, 10**12, "parameter count, an integer >= 1"),
        "macs": integer(0, 10**15, "MACs per image, an integer >= 0"),
        "weight_shape": {"type": "array", "items": integer(1), "maxItems": 8},
    },
}

# Meta keys that identify a bench: results may be added to a file only when they agree, and
# campaigns and exported proxies record them as the bench's fingerprint.
IDENTITY_KEYS = (
    "schema_version",
    "model",
    "model_fingerprint",
    "data_fingerprint",
    "quantizer",
    "candidates",
    "act_bits",
    "sample_seed",
)

BENCH_META_SCHEMA = {
    "type": "object",
    "description": "the bench's meta table",
    "required": [*IDENTITY_KEYS, "layers"],
    "properties": {
        "schema_version": {
            "type": "integer",
            "const": SCHEMA_VERSION,
            "description": f"bench schema {SCHEMA_VERSION} (rebuild with 'emq bench build')",
        },
        "model": text(200, "the model name", 1),
        "model_fingerprint": text(128, "a fingerprint string", 1),
        "data_fingerprint": text(128, "a fingerprint string", 1),
        "quantizer": QUANTIZER_SCHEMA,
        "candidates": {
            "type": "array",
            "items": BITS,
            "minItems": 1,
            "maxItems": 32,
            "uniqueItems": True,
            "description": "distinct supported weight bit-widths, at least one",
        },  # fmt: skip
        "act_bits": BITS,
        "sample_seed": integer(0, 2**64, "the sampling seed, an integer >= 0"),
        "layers": {
            "type": "array",
            "items": LAYER_SCHEMA,
            "minItems": 1,
            "maxItems": MAX_LAYERS,
            "description": "the layer table, one object per quantizable layer",
        },  # fmt: skip
        "test_images": integer(1, 10**9, "an integer >= 1"),
        "fp_top1": number(0, 100, "full-precision top-1 in % (0..100)"),
        "fp_loss": number(0, 1e9, "full-precision loss, a number >= 0"),
        "adaround_cache": text(128, "an AdaRound cache key"),
    },
}

ROW_FIELDS = ("config", "idx", "top1", "loss", "bops", "seconds")
BENCH_ROW_SCHEMA = {
    "type": "object",
    "description": "a results row",
    "properties": {
        "config": {
            "type": "string",
            "maxLength": 16 * MAX_LAYERS,
            "pattern": r"^[0-9]+(,[0-9]+)*\|[0-9]+(,[0-9]+)*$",
            "description": "a configuration key 'w1,w2,...|a1,a2,...'",
        },  # fmt: skip
        "idx": integer(0, MAX_ROWS, "the row's sample index, an integer >= 0"),
        "top1": number(0, 100, "top-1 in % (0..100)"),
        "loss": number(0, 1e9, "a mean loss >= 0"),
        "bops": number(0, 1e30, "BOPs >= 0"),
        "seconds": number(0, 1e9, "seconds >= 0"),
    },
}
BENCH_ROWS_SCHEMA = {"type": "array", "items": BENCH_ROW_SCHEMA}


def check_bench_meta(meta: dict, source: str) -> dict:
    """Validate a bench's meta table (already parsed key by key)."""
    return check(meta, BENCH_META_SCHEMA, f"{source} (meta table)")


def check_bench_rows(rows: list[tuple], meta: dict, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate the results rows against the schema and the file's own meta: every key has
    one bit-width per layer, weight bits among the candidates, activation bits
    ``act_bits``, no configuration twice. Returns the weight and activation bit arrays."""
    where = f"{source} (results table)"
    check([dict(zip(ROW_FIELDS, r, strict=True)) for r in rows], BENCH_ROWS_SCHEMA, where)
    n_layers = len(meta["layers"])
    w_rows, a_rows = [], []
    for i, (key, *_rest) in enumerate(rows):
        w_text, a_text = key.split("|")
        w, a = w_text.split(","), a_text.split(",")
        if len(w) != n_layers or len(a) != n_layers:
            raise FileFormatError(
                f"{where}: field '[{i}].config' has {len(w)}/{len(a)} bit-widths; expected "
                f"{n_layers}, one per layer of the meta table"
            )
        w_rows.append(w)
        a_rows.append(a)
    w_bits = np.asarray(w_rows, dtype=np.int64).reshape(len(rows), n_layers)
    a_bits = np.asarray(a_rows, dtype=np.int64).reshape(len(rows), n_layers)
    outside = np.setdiff1d(w_bits, meta["candidates"])
    if outside.size:
        row = int(np.nonzero(~np.isin(w_bits, meta["candidates"]).all(1))[0][0])
        raise FileFormatError(
            f"{where}: field '[{row}].config' has weight bit-width(s) {outside.tolist()}; "
            f"expected the file's candidates {meta['candidates']}"
        )
    if a_bits.size and not np.all(a_bits == meta["act_bits"]):
        row = int(np.nonzero((a_bits != meta["act_bits"]).any(1))[0][0])
        raise FileFormatError(
            f"{where}: field '[{row}].config' has activation bits other than the file's "
            f"act_bits {meta['act_bits']}"
        )
    both = np.concatenate([w_bits, a_bits], axis=1)
    _, first, counts = np.unique(both, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        row = int(first[np.argmax(counts > 1)])
        raise FileFormatError(
            f"{where}: the configuration of row [{row}] appears {int(counts.max())} times; "
            "expected each configuration once"
        )
    return w_bits, a_bits
