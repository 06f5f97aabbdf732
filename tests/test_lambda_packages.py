"""Each Lambda function's deployment package, built as `sam build` builds it, fits Lambda's limits.

The zips (Extract, Transform) are built by the Makefile's build-* targets (pip install --target for
arm64, Python 3.12); the packages of the Load and Charts image are installed the same way. Sizes are the
unzipped bytes Lambda counts: 250 MB for a zip (layers included), 10 GB for an image.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from tests.support import REPO

MB = 1024 * 1024
ZIP_LIMIT = 250 * MB
IMAGE_LIMIT = 10 * 1024 * MB
ZIP_FUNCTIONS = {"ExtractFunction": "lambda_1_extract", "TransformFunction": "lambda_2_transform"}
# What a zip must not carry: each alone is tens of MB that these stages never import.
HEAVY = ("pandas", "matplotlib", "pyarrow", "numpy")


def unzipped_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def pip_platforms() -> list[str]:
    """The --platform options of the Makefile, so the image is measured for the same machine."""
    text = (REPO / "Makefile").read_text()
    block = re.search(r"LAMBDA_PLATFORMS = (.*?)\n(?!\t)", text, re.S)
    assert block, "LAMBDA_PLATFORMS is missing from the Makefile"
    return block.group(1).replace("\\\n", " ").split()


@unittest.skipUnless(os.environ.get("RUN_SLOW") == "1", "slow (downloads the arm64 packages): set RUN_SLOW=1")
class LambdaPackages(unittest.TestCase):
    def test_each_zip_function_builds_under_250_mb(self) -> None:
        for function, module in ZIP_FUNCTIONS.items():
            with self.subTest(function), tempfile.TemporaryDirectory() as tmp:
                build = subprocess.run(
                    ["make", "--no-print-directory", f"build-{function}", f"ARTIFACTS_DIR={tmp}"],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                )
                self.assertEqual(build.returncode, 0, build.stderr[-3000:])
                folder = Path(tmp)
                size = unzipped_bytes(folder)
                print(f"\n{function}: {size / MB:.1f} MB unzipped", file=sys.stderr)
                self.assertLess(size, ZIP_LIMIT)
                self.assertTrue((folder / "lambdas" / f"{module}.py").is_file())
                self.assertFalse([p for p in folder.rglob("requirements*.txt")], "build files left in the package")
                for name in HEAVY:
                    self.assertFalse((folder / name).exists(), f"{function} carries {name}")

    def test_the_table_image_packages_fit_an_image_and_not_a_zip(self) -> None:
        """Load and Charts: the measurement behind making them an image (the Delta table's packages)."""
        with tempfile.TemporaryDirectory() as tmp:
            install = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--target",
                    tmp,
                    *pip_platforms(),
                    "--implementation",
                    "cp",
                    "--python-version",
                    "3.12",
                    "--only-binary=:all:",
                    "-r",
                    str(REPO / "requirements-lambda-table.txt"),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            self.assertEqual(install.returncode, 0, install.stderr[-3000:])
            subprocess.run(
                [
                    "find",
                    tmp,
                    "-type",
                    "d",
                    "(",
                    "-name",
                    "tests",
                    "-o",
                    "-name",
                    "__pycache__",
                    ")",
                    "-prune",
                    "-exec",
                    "rm",
                    "-rf",
                    "{}",
                    "+",
                ],
                check=True,
            )
            size = unzipped_bytes(Path(tmp))
            engine = unzipped_bytes(Path(tmp) / "deltalake") + unzipped_bytes(Path(tmp) / "pyarrow")
            print(
                f"\nLoad and Charts (image): {size / MB:.1f} MB of packages, deltalake + pyarrow {engine / MB:.1f} MB",
                file=sys.stderr,
            )
            self.assertLess(size, IMAGE_LIMIT)
            self.assertGreater(engine, ZIP_LIMIT, "deltalake and pyarrow fit a zip now: the Load function could be one")
            for name in ("deltalake", "pyarrow", "matplotlib", "pandas"):
                self.assertTrue((Path(tmp) / name).is_dir(), name)


if __name__ == "__main__":
    unittest.main()


BLOCKER = """
import sys
from importlib.abc import MetaPathFinder
BLOCKED = set(sys.argv[1].split(","))
class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in this function's package")
        return None
sys.meta_path.insert(0, Block())
import importlib
for module in sys.argv[2:]:
    importlib.import_module(module)
"""


class ZipHandlersImportOnlyTheirPackages(unittest.TestCase):
    """Extract and Transform import nothing their zip lacks: their handlers' imports, with the big packages blocked."""

    def handler_imports(self, module: str) -> list[str]:
        import ast

        tree = ast.parse((REPO / "lambdas" / f"{module}.py").read_text())
        handler = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "handler")
        names = [f"lambdas.{module}"]
        for node in ast.walk(handler):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            elif isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
        return names

    def test_extract_and_transform(self) -> None:
        blocked = ["pandas", "numpy", "matplotlib", "pyarrow", "deltalake", "jinja2", "PIL", "seaborn"]
        for module in ZIP_FUNCTIONS.values():
            with self.subTest(module):
                done = subprocess.run(
                    [sys.executable, "-c", BLOCKER, ",".join(blocked), *self.handler_imports(module)],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                )
                self.assertEqual(done.returncode, 0, done.stderr[-2000:])
