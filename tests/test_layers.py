"""The layers point one way (DESIGN.md): read from every module's imports, nothing run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "primitives", "emq")


def _imports() -> dict[str, set[str]]:
    """Module name -> project modules it imports (anywhere in the file)."""
    out: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            name = name.removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            out[name] = {m for m in found if m.split(".")[0] in PACKAGES}
    return out


def test_benchmark_and_primitives_import_nothing_above():
    for module, imported in _imports().items():
        top = {m.split(".")[0] for m in imported}
        if module.startswith("benchmark"):
            assert top <= {"benchmark"}, (module, imported)
        if module.startswith("primitives"):
            assert top <= {"benchmark", "primitives"}, (module, imported)


# Above the engine: commands, reports, the experiment runners that write reports, the
# allocator's command-line modules, and the performance scripts.
OUTER = ("emq.cli", "emq.commands", "emq.reports")
ABOVE_ENGINE = (*OUTER, "emq.ablation", "emq.transfer", "emq.baselines.table", "emq.perf",
                "emq.allocate.cli", "emq.allocate.compare", "emq.allocate.rounding")  # fmt: skip


def test_engine_never_reaches_command_or_report_code():
    graph = _imports()
    engine = [m for m in graph if m.startswith("emq") and not m.startswith(ABOVE_ENGINE)]
    assert "emq.evolve" in engine and "emq.baselines" in engine
    for module in engine:
        seen, todo = set(), [module]
        while todo:
            for m in graph.get(todo.pop(), ()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        assert not [m for m in seen if m.startswith(OUTER)], module
