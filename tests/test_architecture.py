"""The layers of the README's Architecture section hold in the code: import-linter's contracts, and nothing imports main.py."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


class ArchitectureTest(unittest.TestCase):
    def test_import_linter_contracts_are_kept(self) -> None:
        command = [str(LINT_IMPORTS)] if LINT_IMPORTS.exists() else [shutil.which("lint-imports") or "lint-imports"]
        try:
            result = subprocess.run(command + ["--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
        except FileNotFoundError:
            self.skipTest("import-linter is not installed (pip install -r requirements-dev.txt)")
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-2000:])
        contracts = (REPO / ".importlinter").read_text(encoding="utf-8").count("[importlinter:contract:")
        self.assertIn(f"{contracts} kept, 0 broken", result.stdout)

    def test_nothing_below_main_imports_it(self) -> None:
        offenders = [
            str(path.relative_to(REPO))
            for folder in ("flows", "lambdas", "utils")
            for path in (REPO / folder).rglob("*.py")
            if "main" in imported_modules(path)
        ]
        self.assertEqual(offenders, [])

    def test_one_module_names_the_data_folders_paths(self) -> None:
        spelled = [
            str(path.relative_to(REPO))
            for folder in ("flows", "lambdas", "utils")
            for path in (REPO / folder).rglob("*.py")
            if path.name != "layout.py"
            and any(
                name in path.read_text(encoding="utf-8")
                for name in ('".state"', '"status.json"', '"daemon.pid"', '/ "raw"', '"raw/"', '".quarantine"')
            )
        ]
        self.assertEqual(spelled, [])


if __name__ == "__main__":
    unittest.main()
