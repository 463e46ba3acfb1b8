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


# Above the engine: commands, reports, the experiment runners that write reports (the
# allocators' comparisons among them), and the performance scripts.
OUTER = ("emq.cli", "emq.commands", "emq.reports")
ABOVE_ENGINE = (*OUTER, "emq.ablation", "emq.transfer", "emq.baselines.table", "emq.perf",
                "emq.allocate.compare", "emq.allocate.rounding")  # fmt: skip


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


def _cycle_through(graph: dict[str, set[str]], module: str, inside: str) -> list[str] | None:
    """A path of imports from ``module`` back to itself among modules under ``inside``."""
    todo, parent = [module], {module: None}
    while todo:
        current = todo.pop()
        for m in sorted(graph.get(current, ())):
            if m == module:
                path = [current]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [*reversed(path), module]
            if m in graph and m.startswith(inside) and m not in parent:
                parent[m] = current
                todo.append(m)
    return None


def test_no_import_cycle_inside_the_allocator_package():
    graph = _imports()
    modules = [m for m in graph if m.startswith("emq.allocate.")]
    assert "emq.allocate.registry" in modules and "emq.allocate.compare" in modules
    for module in modules:
        assert _cycle_through(graph, module, "emq.allocate.") is None, module


def test_the_allocator_modules_import_at_the_top():
    """No function-level imports in the allocator package, its command and its report."""
    paths = [*(ROOT / "emq" / "allocate").glob("*.py"), ROOT / "emq/commands/allocate.py",
             ROOT / "emq/reports/allocate.py"]  # fmt: skip
    for path in paths:
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        nested = [n.lineno for n in ast.walk(tree)
                  if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in top]  # fmt: skip
        assert not nested, (path.name, nested)
