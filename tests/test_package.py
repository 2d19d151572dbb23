"""The shape of the package: imports without cycles, short functions, each helper defined once."""
from __future__ import annotations

import ast
import collections
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "resnets"
MAX_LINES = 60  # a longer function says why in a comment on its `def` line: "# long: <reason>"


def _modules() -> tuple[dict[str, ast.Module], dict[str, list[str]]]:
    trees, sources = {}, {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        text = path.read_text()
        trees[".".join(parts)], sources[".".join(parts)] = ast.parse(text, str(path)), text.splitlines()
    return trees, sources


MODULES, SOURCES = _modules()


def _runtime_imports(tree: ast.Module, name: str) -> set[str]:
    """resnets modules `tree` imports when it runs: every import statement, in functions too, but not those under
    `if TYPE_CHECKING:`, which exist for annotations only."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


PACKAGES = {name for name in MODULES if (SRC.parent / name.replace(".", "/") / "__init__.py").exists()}
IMPORTS = {name: _runtime_imports(tree, name) for name, tree in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), or a node importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _part(module: str) -> str:
    """The subpackage a module belongs to (resnets.models, resnets.data, ...), or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_the_walk_sees_the_imports_it_should():  # the checks below are only as good as this
    assert "resnets.models.registry" in IMPORTS["resnets.hub"]
    assert "resnets.errors" in IMPORTS["resnets.models.resnet"]
    assert "resnets.training.config" not in IMPORTS["resnets.training.optim"]  # under TYPE_CHECKING
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    assert _cycles(IMPORTS) == []


def test_the_subpackages_are_layered():
    """Above the module level too: models know nothing of data or training, data nothing of training, ..."""
    graph = collections.defaultdict(set)
    for module, targets in IMPORTS.items():
        if module == "resnets":  # the package's front door imports what it offers; nothing imports it back
            continue
        graph[_part(module)] |= {_part(t) for t in targets} - {_part(module)}
    assert _cycles(dict(graph)) == []
    assert not graph["resnets.models"] & {"resnets.data", "resnets.training", "resnets.inference", "resnets.hub"}
    assert not graph["resnets.data"] & {"resnets.training", "resnets.inference"}
    assert not graph["resnets.training"] & {"resnets.inference", "resnets.bench", "resnets.cli"}


def _functions():
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node


def test_functions_stay_short_or_say_why():
    too_long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for name, node in _functions()
                if node.end_lineno - node.lineno + 1 > MAX_LINES and "# long:" not in SOURCES[name][node.lineno - 1]]
    assert too_long == []


def test_no_helper_is_defined_twice():
    """Top-level functions and classes: one name, one home (a second copy drifts from the first)."""
    homes = collections.defaultdict(list)
    for name, tree in MODULES.items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                homes[node.name].append(name)
    assert {k: v for k, v in homes.items() if len(v) > 1} == {}


def test_the_models_import_without_the_training_stack():
    """`import resnets` for the models alone stays free of torchvision's datasets, matplotlib and the trainer."""
    code = ("import sys, resnets; print([m for m in ('resnets.training', 'resnets.data', 'matplotlib', "
            "'torchvision.datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
