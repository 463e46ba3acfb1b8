"""The one way from a name or a path to a Scorer (``emq.scoring.Scorer``).

``emq score --proxy``, ``emq allocate --scorer`` and the library accept the same specs:
a registered baseline name (``emq.baselines``), ``"default"`` (the shipped default proxy,
``emq/default_proxy.json``: the true Fisher of the output), a proxy JSON file (``emq
export``), or a campaign folder or its ``best.json``.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.schemas import existing_path, read_json
from emq.baselines import BASELINES, get_baseline
from emq.proxy import DEFAULT_PROXY, best_proxy, load_proxy_document
from emq.scoring import Scorer


def resolve_scorer(spec: str | Path) -> Scorer:
    """A Scorer from a baseline name, ``"default"`` (``emq.proxy.DEFAULT_PROXY``), a proxy
    JSON file, or a run folder (its ``best.json``); a clear error for anything else."""
    if isinstance(spec, str) and spec in BASELINES:
        return get_baseline(spec)
    path = DEFAULT_PROXY if spec == "default" else existing_path(spec)
    if path is not None and path.is_dir():
        return best_proxy(path / "best.json")
    if path is None or not path.is_file():
        shown = str(spec) if len(str(spec)) <= 80 else str(spec)[:77] + "..."
        raise ValueError(
            f"proxy {shown!r} is neither a file nor a baseline name "
            f"(baselines: {', '.join(sorted(BASELINES))})"
        )
    doc = read_json(path, "proxy file")
    if isinstance(doc, dict) and "format" not in doc and "genome_names" in doc:
        return best_proxy(path, doc)
    return load_proxy_document(doc, f"proxy file {path}")
