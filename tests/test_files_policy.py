"""The one file policy (issue 21, item 1): every managed file against every hostile form.

For each file the pipeline writes (DataLayout.managed_files: the history, quarantine, index and its
journals, lock, state files, quality.csv, report.html, datapackage.json, every chart including the
`_<cur>` names) plus raw/, .state/ and the --log-file, each hostile form is tried on a data folder that
already holds a history: a symbolic link, a hard link onto another managed file, a folder where the file
belongs, an immutable file, an oversized cell, binary junk. A `run` then must: end with a documented exit
code and one clear line, never "unexpected" or a traceback; leave the link's target, the other file of a
hard link, the folder and the immutable file untouched; and leave a CSV that pandas and the csv module read.

Immutable: `chattr +i` where the file system and privileges allow it (tried first, said in the table),
else a read-only file (chmod 444), which the policy treats the same way: never replaced, never appended to.

`python -m unittest tests.test_files_policy -v` prints the table the README's fault matrix shows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import tempfile
import unittest
from dataclasses import dataclass
from pathlib import Path

from tests.support import PipelineTestCase, slow_part
from utils.history.layout import DataLayout

FORMS = ("symlink", "hard link", "folder", "immutable", "oversized cell", "binary junk")
ALL, FIRST, OTHERS = "all", "first", "others"  # which chart names a test of the matrix takes
OTHER_CHARTS = "the eight chart names after the first (every chart drawn in both currencies for each)"
BIG = b"x" * 200_000
JUNK = bytes(range(256)) * 4


def chattr_works(folder: Path) -> bool:
    """Whether `chattr +i` takes effect here (root on a file system with the flag)."""
    probe = folder / "probe"
    probe.write_bytes(b"x")
    try:
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    except OSError:
        return False
    if ok:
        try:
            probe.write_bytes(b"y")
            ok = False  # the flag did not stop a write
        except OSError:
            pass
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    probe.unlink()
    return ok


@dataclass
class Row:
    target: str
    form: str
    code: int
    line: str
    untouched: str


ROWS: list[Row] = []


class FilesPolicy(PipelineTestCase):
    """Each managed file x each hostile form, on a folder with a history."""

    @classmethod
    def tearDownClass(cls) -> None:
        if not ROWS:
            return
        immutable = "chattr +i" if getattr(cls, "chattr", False) else "chmod 444 (chattr +i not available here)"
        print(f"\nmanaged files x hostile forms (immutable = {immutable}): python -m unittest tests.test_files_policy")
        print("| file | hostile form | exit | first line on stderr | target untouched |")
        print("|---|---|---|---|---|")
        # In the layout's order of the files (the tests meet them in another: the first chart before the others).
        layout = DataLayout(Path("data"))
        targets = [path.name for _, path in layout.managed_files(("eur", "usd"))] + ["raw/", ".state/"]
        place = {name: n for n, name in enumerate(targets)}
        order = {form: n for n, form in enumerate(FORMS)}
        for row in sorted(ROWS, key=lambda r: (place.get(r.target, len(targets)), order.get(r.form, len(FORMS)))):
            line = row.line.replace("|", "\\|")
            print(f"| {row.target} | {row.form} | {row.code} | {line} | {row.untouched} |")

    def setUp(self) -> None:
        super().setUp()
        # Three coins: the policy is the same for any number, and a case on a chart draws six charts (both
        # currencies), which take half again as long with the ten coins of the other tests' folders.
        self.env.update(
            PIPELINE_CHARTS="1",
            PIPELINE_VS_CURRENCY="eur,usd",
            PIPELINE_HEAL="0",
            PIPELINE_COINS="bitcoin,ethereum,tether",
        )
        type(self).chattr = chattr_works(Path(self.tmp.name))
        self.layout = DataLayout(self.data_dir)
        self.outside = Path(self.tmp.name) / "outside"
        self.outside.mkdir()

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        folder = tempfile.TemporaryDirectory()
        cls.addClassCleanup(folder.cleanup)
        cls.baseline = Path(folder.name) / "baseline"  # made by the class's first test, copied by every case

    def fresh(self) -> None:
        """A data folder holding a history, its index, state, findings, report, data package and both currencies'
        charts: made by one run the first time, copied afterwards (a run per case would take minutes). Every
        test's fake serves the same answers, and no file but report.html names the folder it was made in."""
        baseline = self.baseline
        if not baseline.exists():
            first = self.run_main()
            self.assertIn(first.code, (0, 3), first.stderr)
            self.layout.top_members.write_text("{}\n")
            self.layout.notify_state.write_text('{"consecutive_failures": 0}\n')
            self.layout.quarantine.write_bytes(b"# a line kept from before\n")
            shutil.copytree(self.data_dir, baseline, symlinks=True)
        for path in list(self.data_dir.iterdir()):
            self.undo(path)
        shutil.rmtree(self.data_dir)
        shutil.copytree(baseline, self.data_dir, symlinks=True)
        self.fake.advance(60)

    def targets(self) -> list[tuple[str, Path]]:
        files = [(path.name, path) for _, path in self.layout.managed_files(("eur", "usd"))]
        return [*files, ("raw/", self.layout.raw_dir), (".state/", self.layout.state_dir)]

    # -- the hostile forms ------------------------------------------------------------------------

    def apply(self, form: str, path: Path) -> tuple[Path, bytes] | None:
        """Make path hostile; returns the file (or folder) that must stay untouched and its bytes."""
        is_dir = path in (self.layout.raw_dir, self.layout.state_dir)
        if form == "symlink":
            victim = self.outside / f"victim-{path.name}"
            if is_dir:
                victim.mkdir()
                (victim / "keep").write_bytes(b"keep\n")
                shutil.rmtree(path)
            else:
                victim.write_bytes(b"outside, must stay as it is\n")
                if path.exists():
                    path.unlink()
            path.symlink_to(victim)
            return victim, self.snapshot(victim)
        if form == "hard link":
            if is_dir:
                return None
            other = self.layout.quality if path == self.layout.csv else self.layout.csv
            if not other.exists():
                other.write_bytes(b"")
            if path.exists():
                path.unlink()
            os.link(other, path)
            return other, other.read_bytes()
        if form == "folder":
            if is_dir:
                shutil.rmtree(path)
                path.write_bytes(b"a file where a folder belongs\n")
                return path, path.read_bytes()
            if path.exists():
                path.unlink()
            path.mkdir()
            (path / "inside.txt").write_bytes(b"keep\n")
            return path, self.snapshot(path)
        if form == "immutable":
            if is_dir:
                return None
            if not path.exists():
                path.write_bytes(b"")
            if self.chattr:
                subprocess.run(["chattr", "+i", str(path)], check=True)
                self.addCleanup(subprocess.run, ["chattr", "-i", str(path)], capture_output=True)
            else:
                path.chmod(0o444)
            return path, path.read_bytes()
        if form in ("oversized cell", "binary junk"):
            if is_dir:
                return None
            extra = b'note,"' + BIG + b'"\n' if form == "oversized cell" else JUNK + b"\n"
            with open(path, "ab") as fh:
                fh.write(extra)
            return None
        raise AssertionError(form)

    @staticmethod
    def snapshot(path: Path) -> bytes:
        if path.is_dir():
            return repr(sorted((p.name, p.read_bytes()) for p in path.iterdir() if p.is_file())).encode()
        return path.read_bytes()

    # -- the matrix ---------------------------------------------------------------------------------

    # One test a form, so that a parallel runner can share the matrix out; the table is printed in file order.
    # A case on a chart or the report draws every chart of both currencies (a second and more): where the run
    # gets that far (every form but the links, which stop it first), the first chart's name and the report stay
    # here and the other eight chart names, the same code on other names, are tests of their own, left out of
    # `make test-fast` (slow_part); `make test` runs the whole matrix.
    def test_every_managed_file_as_a_symlink(self) -> None:
        self.every_managed_file_against("symlink")

    def test_every_managed_file_as_a_hard_link(self) -> None:
        self.every_managed_file_against("hard link")

    def test_every_managed_file_as_a_folder(self) -> None:
        self.every_managed_file_against("folder", charts=FIRST)

    def test_every_managed_file_immutable(self) -> None:
        self.every_managed_file_against("immutable", charts=FIRST)

    def test_every_managed_file_with_an_oversized_cell(self) -> None:
        self.every_managed_file_against("oversized cell", charts=FIRST)

    def test_every_managed_file_with_binary_junk(self) -> None:
        self.every_managed_file_against("binary junk", charts=FIRST)

    @slow_part(OTHER_CHARTS)
    def test_the_other_chart_names_as_a_folder(self) -> None:
        self.every_managed_file_against("folder", charts=OTHERS)

    @slow_part(OTHER_CHARTS)
    def test_the_other_chart_names_immutable(self) -> None:
        self.every_managed_file_against("immutable", charts=OTHERS)

    @slow_part(OTHER_CHARTS)
    def test_the_other_chart_names_with_an_oversized_cell(self) -> None:
        self.every_managed_file_against("oversized cell", charts=OTHERS)

    @slow_part(OTHER_CHARTS)
    def test_the_other_chart_names_with_binary_junk(self) -> None:
        self.every_managed_file_against("binary junk", charts=OTHERS)

    def every_managed_file_against(self, form: str, charts: str = ALL) -> None:
        """The form on each target; charts: ALL chart names, the FIRST only (and every other file), or the
        OTHERS only (and no other file)."""
        only = os.environ.get("MATRIX_ONLY", "").split(",")  # e.g. MATRIX_ONLY=quality.csv,.state/ for a few
        chart_names = [name for name, path in self.targets() if path.suffix == ".png"]
        for name, path in self.targets():
            if only != [""] and name not in only:
                continue
            if charts == FIRST and name in chart_names[1:]:
                continue
            if charts == OTHERS and name not in chart_names[1:]:
                continue
            self.fresh()
            kept = self.apply(form, path)
            if kept is None and form in ("symlink", "hard link", "folder", "immutable"):
                continue  # a hard link or immutable flag on a folder is no hostile form of a folder
            with self.subTest(file=name, form=form):
                # The charts (and the report drawn with them) only when the case is about them: seconds per case.
                view = path.suffix == ".png" or path == self.layout.report
                result = self.run_main(env={**self.env, "PIPELINE_CHARTS": "1" if view else "0"})
                lines = [line for line in result.stderr.strip().splitlines() if line]
                first = next((line for line in lines if not line.startswith("quality: ")), "")
                last = next((line for line in reversed(lines) if not line.startswith("quality: ")), "")
                untouched = "n/a"
                if kept is not None:
                    victim, before = kept
                    untouched = "yes" if self.snapshot(victim) == before else "NO"
                ROWS.append(Row(name, form, result.code, _short(first), untouched))
                self.assertNotIn("Traceback", result.stderr)
                self.assertNotIn("unexpected", result.stderr)
                self.assertNotEqual(untouched, "NO", f"{name} {form}: the target changed\n{result.stderr}")
                if form in ("symlink", "hard link"):
                    self.assertEqual(result.code, 2, result.stderr)
                    self.assertEqual(len(lines), 1, result.stderr)
                    self.assertIn("symbolic link" if form == "symlink" else "hard link", last)
                    self.assertIn(name.rstrip("/"), last)
                else:
                    self.assertIn(result.code, (0, 1, 3), result.stderr)
                    if result.code == 3:
                        self.assertIn("not written: ", last)
                self.assert_standard_readers()
            self.undo(path)

    def test_the_log_file_on_managed_files(self) -> None:
        """--log-file through a hard link onto the CSV or a `_usd` chart, or through a symlink: exit 2, untouched."""
        self.fresh()
        cases = [
            ("hard link onto the CSV", self.layout.csv),
            ("hard link onto crypto_price_trend_usd.png", self.data_dir / "crypto_price_trend_usd.png"),
        ]
        for form, other in cases:
            log = self.outside / "hard.log"
            log.unlink(missing_ok=True)
            os.link(other, log)
            before = other.read_bytes()
            result = self.run_main("--log-file", str(log))
            ROWS.append(Row("--log-file", form, result.code, _short(result.stderr.strip()), _same(other, before)))
            self.assertEqual(result.code, 2, result.stderr)
            self.assertIn("hard link", result.stderr)
            self.assertEqual(other.read_bytes(), before)
        link = self.outside / "link.log"
        link.symlink_to(self.layout.csv)
        before = self.layout.csv.read_bytes()
        result = self.run_main("--log-file", str(link))
        ROWS.append(
            Row(
                "--log-file",
                "symlink onto the CSV",
                result.code,
                _short(result.stderr.strip()),
                _same(self.layout.csv, before),
            )
        )
        self.assertEqual(result.code, 2, result.stderr)
        self.assertEqual(self.layout.csv.read_bytes(), before)
        direct = self.run_main("--log-file", str(self.data_dir / "crypto_price_trend_usd.png"))
        ROWS.append(Row("--log-file", "a `_usd` chart's own name", direct.code, _short(direct.stderr.strip()), "yes"))
        self.assertEqual(direct.code, 2, direct.stderr)

    # -- helpers ------------------------------------------------------------------------------------

    def undo(self, path: Path) -> None:
        if path.is_symlink() or not path.exists():
            return
        if self.chattr and path.is_file():
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        with contextlib.suppress(OSError):
            path.chmod(0o755 if path.is_dir() else 0o644)

    def assert_standard_readers(self) -> None:
        """The history opens in the csv module and pandas: rows of the header's width, every observation present."""
        if not self.layout.csv.is_file() or self.layout.csv.is_symlink():
            return
        import pandas as pd

        data = self.layout.csv.read_bytes()
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        self.assertTrue(all(len(r) == len(rows[0]) for r in rows), "a row of another width")
        frame = pd.read_csv(io.BytesIO(data))
        self.assertEqual(len(frame), len(rows) - 1)


def _same(path: Path, before: bytes) -> str:
    return "yes" if path.read_bytes() == before else "NO"


def _short(line: str, limit: int = 150) -> str:
    import re

    line = re.sub(r"/\S*/data/", "data/", line.splitlines()[0] if line else "")
    line = re.sub(r"/\S*/data(?=\s)", "data", line)
    line = re.sub(r"/\S*/outside/", "outside/", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


if __name__ == "__main__":
    unittest.main()
