"""What every report writes the same way: CSV and JSON files, written atomically."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.cache import atomic_path, atomic_write_text


def json_safe(value: Any) -> Any:
    """A JSON-ready scalar: numpy numbers as Python numbers, NaN and inf as ``None``."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def number(value: Any) -> float:
    """A report value as a float: ``None`` (undefined, as JSON has it) is NaN."""
    return float("nan") if value is None else float(value)


def clean(row: dict) -> dict:
    """``row`` with every value ``json_safe``."""
    return {k: json_safe(v) for k, v in row.items()}


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (``json_safe`` values), replacing ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_safe))


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """One CSV row per dict, in ``columns`` (a missing value is empty), replacing ``path``
    atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
