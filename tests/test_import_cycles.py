"""No import cycle among the project's modules, counting imports inside functions (import-linter sees only layers)."""

from __future__ import annotations

import ast
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "lambdas", "utils")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    found = {"main": REPO / "main.py"}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of import nodes under `if TYPE_CHECKING:`: never run, so never part of a cycle."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for child in node.body for inner in ast.walk(child))
    return skipped


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a module imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in modules and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def unexplained_lazy_imports(path: Path) -> list[int]:
    """Lines of imports inside functions that give no reason: a comment on the block of imports, or just above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    found: list[int] = []
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for holder in ast.walk(function):
            for field in ("body", "orelse", "finalbody"):
                statements = getattr(holder, field, None)
                if not isinstance(statements, list):
                    continue
                block: list[ast.stmt] = []
                for statement in [*statements, None]:
                    if isinstance(statement, (ast.Import, ast.ImportFrom)):
                        block.append(statement)
                        continue
                    if block:
                        above = lines[block[0].lineno - 2].strip()
                        text = lines[block[0].lineno - 1 : block[-1].end_lineno]
                        if not above.startswith("#") and not any("#" in line for line in text):
                            found.append(block[0].lineno)
                    block = []
    return sorted(set(found))


class ImportCycles(unittest.TestCase):
    def test_no_module_imports_itself_round_a_cycle(self) -> None:
        modules = project_modules()
        graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
        self.assertIn("flows.run_once", graph["flows.run"])  # the walk sees the imports at the top
        self.assertIn("lambdas.lambda_4_charts", graph["flows.views"])  # and those inside functions
        self.assertEqual(cycles(graph), [])

    def test_each_import_inside_a_function_says_why(self) -> None:
        """Start-up time, an optional package, or a Lambda handler: the reasons an import waits for its function."""
        unexplained = [
            f"{path.relative_to(REPO)}:{line}"
            for path in project_modules().values()
            for line in unexplained_lazy_imports(path)
        ]
        self.assertEqual(unexplained, [])

    def test_the_cycle_finder_finds_one(self) -> None:
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]])


if __name__ == "__main__":
    unittest.main()
