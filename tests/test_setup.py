"""The two set-up commands: `make run` and `make test` keep .venv in step with the requirements files."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from tests.support import REPO, PipelineTestCase, read_rows

CHARTS = ("crypto_price_trend.png", "crypto_market_cap_trend.png", "crypto_performance.png")


def make_env() -> dict[str, str]:
    """The environment without a calling make's flags or this suite's settings, as a user's shell has it."""
    return {
        k: v
        for k, v in os.environ.items()
        # make passes its command line's variables (`make test ARGS=-x`) to the suite in the environment
        if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VIRTUAL_ENV", "ARGS", "VENV", "PYTHON", "TEST_WORKERS")
        and not k.startswith(("PIPELINE_", "COINGECKO_"))
    }


@unittest.skipUnless(shutil.which("make"), "make is not installed")
class MakeDecides(unittest.TestCase):
    """What make would do (`make -n`), for a venv that is missing, current or stale: no install happens."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.venv = Path(tmp.name) / "venv"

    def plan(self, *goals: str) -> str:
        proc = subprocess.run(
            ["make", "-n", "--no-print-directory", "-C", str(REPO), f"VENV={self.venv}", *goals],
            env=make_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout

    def stamp(self, name: str, newer: bool) -> None:
        """A stamp newer (current) or older (stale) than every requirements file."""
        self.venv.mkdir(exist_ok=True)
        path = self.venv / name
        path.touch()
        when = time.time() + 3600 if newer else 0
        os.utime(path, (when, when))

    def test_a_missing_venv_is_created_from_the_runtime_requirements_only(self) -> None:
        plan = self.plan("run")
        self.assertIn("-m venv", plan)
        self.assertIn("pip install --quiet --disable-pip-version-check -r requirements.txt", plan)
        self.assertNotIn("requirements-dev.txt", plan)
        self.assertTrue(plan.rstrip().endswith(f"{self.venv}/bin/python main.py"), plan)

    def test_a_current_venv_just_runs_and_options_pass_through(self) -> None:
        self.stamp(".installed-requirements", newer=True)
        plan = self.plan("run", "ARGS=--coins bitcoin -q")
        self.assertEqual(plan.strip(), f"{self.venv}/bin/python main.py --coins bitcoin -q")

    def test_an_edited_requirements_file_reinstalls(self) -> None:
        self.stamp(".installed-requirements", newer=False)
        self.assertIn("-r requirements.txt", self.plan("run"))

    def test_make_test_adds_the_dev_requirements_then_runs_the_suite_on_two_processes(self) -> None:
        self.stamp(".installed-requirements", newer=True)
        plan = self.plan("test").strip().splitlines()
        self.assertIn("-r requirements-dev.txt", plan[0])
        # The project's byte code first, so that the tests' `python main.py` children do not each compile it.
        self.assertEqual(plan[-2], f"{self.venv}/bin/python -m compileall -q main.py flows lambdas utils tests")
        self.assertEqual(plan[-1], f"{self.venv}/bin/python -m pytest -n 2 --dist worksteal tests")
        plan = self.plan("test", "TEST_WORKERS=0", "ARGS=-k cli").strip().splitlines()
        self.assertEqual(plan[-1], f"{self.venv}/bin/python -m pytest -n 0 --dist worksteal tests -k cli")

    def test_make_test_fast_compiles_then_leaves_out_the_three_slowest_modules(self) -> None:
        self.stamp(".installed-requirements", newer=True)
        self.stamp(".installed-requirements-dev", newer=True)
        plan = self.plan("test-fast").strip().splitlines()
        self.assertEqual(plan[0], f"{self.venv}/bin/python -m compileall -q main.py flows lambdas utils tests")
        command = plan[1].split()  # and the tests marked slow_part (tests/support.py) skipped
        self.assertEqual(command[:7], ["TEST_FAST=1", f"{self.venv}/bin/python", "-m", "pytest", "-n", "3", "--dist"])
        modules = {word for word in command if word.startswith("tests/")}
        every = {f"tests/{path.name}" for path in (REPO / "tests").glob("test_*.py")}
        slow = {"tests/test_crash_concurrency.py", "tests/test_hostile.py", "tests/test_fault_matrix.py"}
        self.assertEqual(modules, every - slow)

    def test_every_test_the_fast_tier_leaves_out_is_still_a_test(self) -> None:
        # tests/conftest.py names them; a renamed or deleted test would otherwise drop out silently.
        import importlib

        from tests.conftest import FULL_SUITE_ONLY

        for test_id in FULL_SUITE_ONLY:
            with self.subTest(test_id):
                module, cls, method = test_id.split("::")
                case = getattr(importlib.import_module(f"tests.{module.removesuffix('.py')}"), cls, None)
                self.assertTrue(isinstance(case, type) and issubclass(case, unittest.TestCase), f"no class {cls}")
                self.assertTrue(callable(getattr(case, method, None)), f"no test {method} in {cls}")

    def test_an_old_python_is_named_before_anything_is_created(self) -> None:
        proc = subprocess.run(
            ["make", "-C", str(REPO), f"VENV={self.venv}", "PYTHON=false", "run"],
            env=make_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(proc.returncode, 2)
        self.assertIn("make: Python 3.11 or newer is needed to create", proc.stderr)
        self.assertFalse(self.venv.exists())

    def test_the_lambda_build_packages_the_function_requirements_only(self) -> None:
        plan = self.plan("build-ExtractFunction", "ARTIFACTS_DIR=/tmp/artifacts")
        self.assertIn("requirements-lambda-fetch.txt", plan)
        self.assertNotIn("requirements-dev", plan)
        self.assertNotIn("requirements-aws", plan)
        self.assertNotIn("cp requirements.txt", plan)

    def test_the_runtime_requirements_hold_no_test_or_aws_package(self) -> None:
        runtime = (REPO / "requirements.txt").read_text().lower()
        for package in ("hypothesis", "moto", "boto3", "cfn-lint", "import-linter"):
            self.assertNotIn(package, runtime)
        self.assertIn("-r requirements-aws.txt", (REPO / "requirements-dev.txt").read_text())
        self.assertIn("-r requirements.txt", (REPO / "requirements-aws.txt").read_text())


@unittest.skipUnless(os.environ.get("RUN_SLOW") == "1", "slow (a clone and a venv): set RUN_SLOW=1, as .ci/run does")
@unittest.skipUnless(shutil.which("make") and shutil.which("git"), "needs make and git")
class MakeRunInAFreshClone(PipelineTestCase):
    """git clone, then `make run`, against the local fake CoinGecko: the README's first command, end to end."""

    def test_make_run_in_a_fresh_clone_writes_the_csv_and_the_charts(self) -> None:
        clone = Path(self.tmp.name) / "clone"
        cloned = subprocess.run(
            ["git", "clone", "--quiet", str(REPO), str(clone)], capture_output=True, text=True, timeout=120
        )
        if cloned.returncode != 0:
            self.skipTest(f"cannot clone {REPO}: {cloned.stderr.strip()}")
        command = ["make", "-C", str(clone), "run", "ARGS=--coins bitcoin,ethereum,dogecoin"]
        own_venv = REPO / ".venv"
        if Path(sys.prefix).resolve() == own_venv.resolve():
            # In CI `make test` made this venv a minute ago: reusing it keeps the test fast and offline (the
            # clone's requirements are newer than its stamp, so make still runs pip, which finds all installed).
            # Elsewhere make builds the clone its own .venv: one real install, from pip's cache when warm.
            command.append(f"VENV={own_venv}")
        env = dict(make_env(), COINGECKO_API_URL=self.fake.base_url)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("run ok: 3 coins, 3 rows appended", proc.stderr)
        rows = read_rows(clone / "data" / "crypto_data.csv")
        self.assertEqual(
            [(r["coin_id"], r["vs_currency"]) for r in rows],
            [("bitcoin", "eur"), ("ethereum", "eur"), ("dogecoin", "eur")],
        )
        self.assertEqual(rows[0]["current_price"], "16951.52")
        for name in CHARTS:
            data = (clone / "data" / name).read_bytes()
            self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n", name)
            width, height = struct.unpack(">II", data[16:24])
            self.assertGreater(width, 800)
            self.assertGreater(height, 400)
