"""Each Lambda function's deployment package, built as `sam build` builds it, fits Lambda's limits.

The zips are built by the Makefile's build-* targets (pip install --target for arm64, Python 3.12);
the Charts image's packages are installed the same way its Dockerfile installs them. Sizes are the
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
ZIP_FUNCTIONS = {"ExtractFunction": "lambda_1_extract", "TransformFunction": "lambda_2_transform",
                 "LoadFunction": "lambda_3_load"}
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
                build = subprocess.run(["make", "--no-print-directory", f"build-{function}", f"ARTIFACTS_DIR={tmp}"],
                                       cwd=REPO, capture_output=True, text=True)
                self.assertEqual(build.returncode, 0, build.stderr[-3000:])
                folder = Path(tmp)
                size = unzipped_bytes(folder)
                print(f"\n{function}: {size / MB:.1f} MB unzipped", file=sys.stderr)
                self.assertLess(size, ZIP_LIMIT)
                self.assertTrue((folder / "lambdas" / f"{module}.py").is_file())
                self.assertFalse([p for p in folder.rglob("requirements*.txt")], "build files left in the package")
                for name in HEAVY:
                    self.assertFalse((folder / name).exists(), f"{function} carries {name}")
                if function == "LoadFunction":
                    self.assertTrue((folder / "deltalake").is_dir())

    def test_the_charts_image_packages_fit_an_image(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            install = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--target", tmp, *pip_platforms(),
                 "--implementation", "cp", "--python-version", "3.12", "--only-binary=:all:",
                 "-r", str(REPO / "requirements-lambda-charts.txt")], cwd=REPO, capture_output=True, text=True)
            self.assertEqual(install.returncode, 0, install.stderr[-3000:])
            subprocess.run(["find", tmp, "-type", "d", "(", "-name", "tests", "-o", "-name", "__pycache__", ")",
                            "-prune", "-exec", "rm", "-rf", "{}", "+"], check=True)
            size = unzipped_bytes(Path(tmp))
            print(f"\nChartsFunction (image): {size / MB:.1f} MB of packages", file=sys.stderr)
            self.assertLess(size, IMAGE_LIMIT)
            for name in ("deltalake", "matplotlib", "pandas"):
                self.assertTrue((Path(tmp) / name).is_dir(), name)


if __name__ == "__main__":
    unittest.main()
