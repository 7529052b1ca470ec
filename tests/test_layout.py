"""The shape of the code: no import circles between the package's modules
(imports inside functions count too: a lazy import is still a dependency),
and TensorFlow imported through mlbackend.tf only."""

from __future__ import annotations

import ast

from helpers.run import ROOT

PACKAGE = ROOT / "mlbackend"


def _module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps - {"mlbackend"}  # the package itself is only its version
    return graph


def test_no_import_circles():
    graph = _imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError(
                    "import circle: " + " -> ".join(stack[stack.index(dep) :] + [dep])
                )
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_tensorflow_is_imported_in_one_place():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "tf.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n == "tensorflow"], (
                f"{path.name} imports tensorflow itself: use mlbackend.tf.import_tensorflow()"
            )
