"""The architecture holds: imports point one way down the layers, no cycles, and the commands that never
run the engine start without torch.

Counted as the issue that set the rule says: every import (function-local ones too) between the
first-level subpackages and modules of `shifttune/`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shifttune"
# Top to bottom; a unit may import its own layer's other units (no cycles) and any layer below.
LAYERS = [
    {"__init__", "__main__", "cli"},
    {"server", "bench", "tui"},
    {"recommend", "profile"},
    {"engine"},
    {"runner"},
    {"model"},
    {"kernels", "parallel", "telemetry"},
    {"config", "signals"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_units(path: Path) -> set[str]:
    """First-level shifttune units that this file imports anywhere in it (module level or not)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != "shifttune" or len(parts) < 2:
                continue
            if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file():
                out.add(parts[1])
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = unit_of(path)
        graph.setdefault(unit, set()).update(u for u in imported_units(path) if u != unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_every_unit_has_a_layer():
    assert set(import_graph()) <= set(RANK), set(import_graph()) - set(RANK)


def test_imports_point_down():
    upward = [(u, v) for u, vs in import_graph().items() for v in vs if RANK[v] < RANK[u]]
    assert not upward, f"imports that point up the layers: {upward}"


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("argv", [["--help"], ["recommend", "--json"]])
def test_commands_that_never_run_the_engine_do_not_import_torch(argv):
    code = (
        "import sys\nfrom shifttune.cli import app\nsys.argv = ['shifttune', *sys.argv[1:]]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().endswith("NO-TORCH"), proc.stderr[-2000:]
