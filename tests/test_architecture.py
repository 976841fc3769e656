"""The package's shape: imports one way (no cycles), and what the workflow reads while it plans
(the grid and every stage's settings) imports no deep-learning or numeric stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.workflow_utils import ROOT

PACKAGE = ROOT / "finescope"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """finescope modules that ``path`` imports when it is imported (not inside functions);
    ``from package import name`` counts as the submodule when there is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # Importing a.b.c imports the packages a and a.b first.
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate != name:
                    found.add(candidate)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycles():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _top_level_imports(path, name, set(paths)) for name, path in paths.items()}
    # A package's __init__ importing its own submodules is how re-exports work, not a cycle.
    graph = {
        name: {m for m in deps if not m.startswith(f"{name}.")} for name, deps in graph.items()
    }
    assert len(graph) > 50
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_planning_imports_no_torch_transformers_sklearn_scipy_or_pandas():
    """The Snakefile imports finescope.workflow in every job and on the login node; the grid
    builds each job's typed settings there, so none of them may pull in a heavy library."""
    code = (
        "import sys\n"
        "import finescope.workflow\n"
        "import finescope.settings.finetune, finescope.settings.probe\n"
        "import finescope.settings.compare, finescope.settings.probe_pool\n"
        "import finescope.settings.analysis, finescope.settings.tracking\n"
        "heavy = {'torch', 'transformers', 'sklearn', 'scipy', 'pandas'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
