"""Schemas of the files ``emq`` reads from users: proxy JSON, a run folder's
``campaign.json``, ``checkpoint.json`` and ``best.json``, and quantizer groups JSON.

Each reader calls ``read_document(path, SCHEMA, what)``: strict JSON within size and depth
limits, then the schema (``jsonschema``), before anything is computed. Checks that relate
one field to another (a population no larger than the campaign's, a layer in one group
only) stay with the code that knows both. The bench file's schemas are in
``benchmark.schemas``, whose helpers these build on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.schemas import (
    ADAROUND_SCHEMA,
    BENCH_META_SCHEMA,
    BITS,
    IDENTITY_KEYS,
    MAX_TEXT,
    FileFormatError,
    check,
    integer,
    number,
    read_json,
    text,
)

# Genomes: the evolution keeps trees of height <= 8 (<= 511 nodes); hand-written proxies get
# room to spare, but no more than the (recursive) canonical form and evaluation can take.
MAX_GENOME_NODES = 1024
MAX_GENOME_HEIGHT = 64
MAX_FORMULA = 16 * MAX_GENOME_NODES
PROXY_FORMAT = "emq-proxy"
PROXY_FORMAT_VERSION = 1

NAME = text(64, "an operation or input name", 1)
GENOME_NAMES = {
    "type": "array",
    "items": NAME,
    "minItems": 1,
    "maxItems": MAX_GENOME_NODES,
    "description": f"the genome in prefix order: 1 to {MAX_GENOME_NODES} operation/input names",
}
FORMULA = text(MAX_FORMULA, "a proxy formula such as 'mul(sqrt(W), b)'", 1)
CORRELATION = {
    "anyOf": [number(-1, 1), {"type": "null"}],
    "description": "a correlation in [-1, 1] (or null)",
}
REPORT = {
    "type": ["object", "null"],
    "additionalProperties": CORRELATION,
    "maxProperties": 64,
    "description": "a correlation report {name: value in [-1, 1]} (or null)",
}
FINGERPRINT = {
    "type": "object",
    "description": "a bench fingerprint (the identity keys of a bench's meta table)",
    "required": ["schema_version", "model", "candidates", "act_bits"],
    "properties": {k: BENCH_META_SCHEMA["properties"][k] for k in IDENTITY_KEYS},
}

COMBINE = {
    "enum": ["table", "joint"],
    "description": "how a configuration's layers combine: 'table' (the sum of per-layer "
    "scores, the default) or 'joint' (for revert(sq_norm(X)): the layers' X added before "
    "the norm)",
}
CROSS = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "description": "the joint combination's weight of the cross-layer terms, in [0, 1] (1, "
    "the full joint form, when absent)",
}
PROXY_SCHEMA = {
    "type": "object",
    "description": f"an EMQ proxy file ({{'format': '{PROXY_FORMAT}', 'genome': [...], ...}})",
    "required": ["format", "format_version", "genome"],
    "properties": {
        "format": {"const": PROXY_FORMAT, "description": f"'{PROXY_FORMAT}'"},
        "format_version": {
            "type": "integer",
            "const": PROXY_FORMAT_VERSION,
            "description": f"proxy format version {PROXY_FORMAT_VERSION}",
        },
        "genome": GENOME_NAMES,
        "name": text(200, "the proxy's name"),
        "formula": FORMULA,
        "inputs": {"type": "array", "items": NAME, "maxItems": 64},
        "combine": COMBINE,
        "cross": CROSS,
    },
}

CAMPAIGN_SETTINGS = {
    "type": "object",
    "description": "the campaign's settings",
    "required": ["population", "seed", "mode", "offspring", "generator", "max_height"],
    "additionalProperties": False,
    "properties": {
        "population": integer(4, 100_000, "an integer >= 4"),
        "seed": integer(0, 2**63, "an integer >= 0"),
        "mode": {"enum": ["steady", "generational"]},
        "offspring": integer(1, 100_000, "an integer >= 1"),
        "generator": {"enum": ["branched", "tree"]},
        "max_height": integer(1, MAX_GENOME_HEIGHT, f"an integer from 1 to {MAX_GENOME_HEIGHT}"),
        "cxpb": number(0, 1, "a probability in [0, 1]"),
        "mutpb": number(0, 1, "a probability in [0, 1]"),
        "osp": {"type": "boolean"},
        "dps": {"type": "boolean"},
        "split_seed": integer(0, 2**63, "an integer >= 0"),
        "calib_images": integer(1, 100_000, "an integer >= 1"),
        "calib_seed": integer(0, 2**63, "an integer >= 0"),
        "hof_size": integer(1, 100_000, "an integer >= 1"),
        "inputs": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 64},
        "init": {"type": "array", "items": FORMULA, "maxItems": 100_000},
        "bench_agg": text(32, "a bench aggregate name"),
        "combine": {"enum": ["table", "auto"]},
        "dz_images": integer(1, 100_000, "an integer >= 1"),
        "cross": CROSS,
    },
}

CAMPAIGN_SCHEMA = {
    "type": "object",
    "description": "a campaign.json ({settings, bench_fingerprint, ...})",
    "required": ["settings", "bench_fingerprint"],
    "properties": {
        "settings": CAMPAIGN_SETTINGS,
        "bench_fingerprint": FINGERPRINT,
        "extra_bench_fingerprints": {"type": "array", "items": FINGERPRINT, "maxItems": 1000},
        "bench": text(MAX_TEXT, "the bench's path"),
        "version": text(64, "the EMQ version"),
        "inputs_version": integer(3, 1000, "the proxy inputs' cache version"),
    },
}

# Spearman@topk is in [-1, 1]; the mean - std of several (the default bench aggregate) can
# reach -sqrt(2) (about six values of -1 to one of 1).
FITNESS = number(-1.5, 1, "a fitness (Spearman@topk, or mean - std of several) in [-1.5, 1]")
COUNT = integer(0, 2**53, "a count, an integer >= 0")
GENOME_RECORD = {
    "type": "object",
    "description": "a genome record {genome, formula, fitness, fingerprint}",
    "required": ["genome", "formula", "fitness", "fingerprint"],
    "properties": {
        "genome": FORMULA,
        "formula": FORMULA,
        "fitness": FITNESS,
        "fingerprint": {"type": ["string", "null"], "maxLength": 128},
        "step": COUNT,
    },
}
HISTORY_ROW = {
    "type": "object",
    "description": "a log row {step, evaluations, best, median, ...} of numbers",
    "required": ["step", "evaluations", "best", "median"],
    "properties": {"step": COUNT, "evaluations": COUNT, "best": FITNESS, "median": FITNESS},
    "additionalProperties": {"type": "number"},
    "maxProperties": 64,
}
SCREEN_RESULT = {
    "type": "object",
    "description": "a screening result {status, fitness, ...}",
    "required": ["status", "fitness"],
    "properties": {
        "status": text(32, "a screening status", 1),
        "fitness": FITNESS,
        "reason": {"type": ["string", "null"], "maxLength": MAX_TEXT},
        "fingerprint": {"type": ["string", "null"], "maxLength": 128},
        "duplicate_of": {"type": ["string", "null"], "maxLength": 128},
        "seconds": number(0, 1e9, "seconds >= 0"),
    },
}
COUNTS = {"type": "object", "additionalProperties": COUNT, "maxProperties": 256}

CHECKPOINT_SCHEMA = {
    "type": "object",
    "description": "a checkpoint.json written by 'emq evolve'",
    "required": [
        "step",
        "evaluations",
        "eval_seconds",
        "rng",
        "population",
        "hall_of_fame",
        "screener",
        "osp",
        "history",
    ],  # fmt: skip
    "properties": {
        "step": integer(0, 10**9, "the number of finished steps, an integer >= 0"),
        "evaluations": COUNT,
        "eval_seconds": number(0, 1e12, "seconds spent evaluating, a number >= 0"),
        "rng": {
            "type": "array",
            "description": "a Python random.Random state [version, [625 integers], null]",
            "prefixItems": [
                {"const": 3},
                {
                    "type": "array",
                    "items": integer(0, 2**32 - 1),
                    "minItems": 625,
                    "maxItems": 625,
                },  # fmt: skip
                {"anyOf": [{"type": "null"}, {"type": "number"}]},
            ],
            "minItems": 3,
            "maxItems": 3,
        },
        "population": {
            "type": "array",
            "items": GENOME_RECORD,
            "minItems": 2,
            "maxItems": 100_000,
            "description": "the population, at least 2 genome records",
        },
        "hall_of_fame": {
            "type": "array",
            "items": {**GENOME_RECORD, "required": [*GENOME_RECORD["required"], "step"]},
            "maxItems": 100_000,
            "description": "a list of genome records with their step",
        },
        "screener": {
            "type": "object",
            "required": ["counts", "cache", "fingerprints"],
            "properties": {
                "counts": COUNTS,
                "cache": {"type": "object", "additionalProperties": SCREEN_RESULT},
                "fingerprints": {"type": "object", "additionalProperties": text(128)},
            },
        },
        "osp": {
            "type": "object",
            "required": ["tried", "accepted"],
            "properties": {"tried": COUNTS, "accepted": COUNTS},
        },
        "history": {
            "type": "array",
            "items": HISTORY_ROW,
            "minItems": 1,
            "description": "the log rows, one per step (and one for the initial population)",
        },
    },
}

BEST_SCHEMA = {
    "type": "object",
    "description": "a best.json written by 'emq evolve'",
    "required": ["genome_names", "fitness_search"],
    "properties": {
        "formula": FORMULA,
        "genome": FORMULA,
        "genome_names": GENOME_NAMES,
        "combine": COMBINE,
        "cross": CROSS,
        "fitness_search": FITNESS,
        "heldout": REPORT,
        "step": COUNT,
        "evaluations": COUNT,
        "bench": text(MAX_TEXT, "the bench's path"),
        "bench_fingerprint": FINGERPRINT,
        "settings": {"type": "object"},
        "version": text(64, "the EMQ version"),
    },
}

CANDIDATE = {
    "description": "a candidate 'W<bits>A<bits>' (e.g. W4A8) or a pair [w, a] of integers",
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^\s*[Ww][0-9]{1,2}[Aa][0-9]{1,2}\s*$",
            "description": "a candidate 'W<bits>A<bits>' such as W4A8, or a pair [w, a]",
        },
        {
            "type": "array",
            "items": integer(0, 64),
            "minItems": 2,
            "maxItems": 2,
            "description": "a pair [w, a] of integer bit-widths, or a 'W<bits>A<bits>' text",
        },
    ],
}
CANDIDATES = {
    "type": "array",
    "items": CANDIDATE,
    "minItems": 1,
    "maxItems": 256,
    "description": "a non-empty list of candidates such as ['W4A8', [8, 8]]",
}
GROUPS_SCHEMA = {
    "type": "object",
    "description": "a groups file {'groups': [{'layers': [...], 'candidates': [...]}, ...]}",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "maxItems": 100_000,
            "items": {
                "type": "object",
                "description": "a group {'name'?, 'layers': [...], 'candidates'?: [...]}",
                "required": ["layers"],
                "additionalProperties": False,
                "properties": {
                    "name": text(200, "the group's name", 1),
                    "layers": {
                        "type": "array",
                        "items": text(400, "a layer name", 1),
                        "minItems": 1,
                        "maxItems": 100_000,
                        "description": "a non-empty list of layer names",
                    },  # fmt: skip
                    "candidates": CANDIDATES,
                },
            },
        },
        "default_candidates": CANDIDATES,
    },
}


CONFIGS_SCHEMA = {
    "type": "array",
    "description": "a JSON list of configurations, each a list of integer bit-widths",
    "maxItems": 1_000_000,
    "items": {
        "type": "array",
        "items": integer(0, 64, "a bit-width (an integer)"),
        "minItems": 1,
        "maxItems": 100_000,
        "description": "a configuration: a list of integer bit-widths, one per layer",
    },
}


LAYER_NAMES = {
    "type": "array",
    "items": text(400, "a layer name", 1),
    "minItems": 1,
    "maxItems": 100_000,
    "description": "the quantizable layers' names",
}
LAYER_BITS = {
    "type": "array",
    "items": BITS,
    "minItems": 1,
    "maxItems": 100_000,
    "description": "one bit-width per layer, integers from 2 to 16",
}
ALLOCATION_SCHEMA = {
    "type": "object",
    "description": "an object {'model', 'layer_names', 'w_bits', 'a_bits', ...}",
    "required": ["model", "layer_names", "w_bits", "a_bits"],
    "properties": {
        "model": text(400, "a zoo model name or module.path:factory", 1),
        "layer_names": LAYER_NAMES,
        "w_bits": LAYER_BITS,
        "a_bits": LAYER_BITS,
        "rounding": {"enum": ["nearest", "adaround"], "description": "'nearest' or 'adaround'"},
        "adaround": {
            "anyOf": [ADAROUND_SCHEMA, {"type": "null"}],
            "description": ADAROUND_SCHEMA["description"] + " or null",
        },
        "checkpoint": {
            "anyOf": [text(MAX_TEXT, "", 1), {"type": "null"}],
            "description": "the checkpoint's path, or null (shipped)",
        },
    },
}


def read_document(path: Path | str, schema: dict, what: str) -> Any:
    """Read ``path`` as strict JSON within limits and validate it against ``schema``."""
    doc = read_json(path, what)
    return check(doc, schema, f"{what} {path}")


def check_document(doc: Any, schema: dict, source: str) -> Any:
    """Validate an already parsed document (``source`` names it in the error)."""
    return check(doc, schema, source)


__all__ = [
    "ALLOCATION_SCHEMA",
    "BEST_SCHEMA",
    "CAMPAIGN_SCHEMA",
    "CHECKPOINT_SCHEMA",
    "GROUPS_SCHEMA",
    "PROXY_SCHEMA",
    "FileFormatError",
    "check_document",
    "read_document",
]
