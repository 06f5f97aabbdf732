"""The README documents every command-line option that `--help` shows, and the set-up and test commands CI runs."""

from __future__ import annotations

import argparse
import re
import unittest

from tests.support import REPO, cli
from utils.options import OPTION_TABLE
from utils.settings import Settings


def every_option_string(parser: argparse.ArgumentParser) -> set[str]:
    """All option strings of a parser and of its subcommands."""
    found: set[str] = set()
    for action in parser._actions:  # argparse offers no public walk over actions
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= every_option_string(sub)
    return found


class ReadmeInStep(unittest.TestCase):
    def setUp(self) -> None:
        self.readme = (REPO / "README.md").read_text(encoding="utf-8")

    def test_every_help_option_is_in_the_readme(self) -> None:
        options = every_option_string(cli.build_parser())
        self.assertIn("--coins", options)
        missing = sorted(o for o in options if not re.search(rf"`{re.escape(o)}[ `=,]", self.readme))
        self.assertEqual(missing, [], "options missing from README.md")

    def test_every_command_is_in_the_readme(self) -> None:
        for command in cli.COMMANDS:
            self.assertIn(f"python main.py {command}", self.readme)

    def test_ci_runs_the_readme_test_command(self) -> None:
        for command in ("make run", "make test", "python -m unittest discover -s tests"):
            self.assertIn(command, self.readme)
        self.assertIn("\nmake test\n", (REPO / ".ci" / "run").read_text())
        makefile = (REPO / "Makefile").read_text()
        self.assertIn("\t$(PYTEST) tests $(ARGS)", makefile)  # the same tests, on pytest-xdist's processes
        self.assertIn("PYTEST = $(BIN)/python -m pytest -n $(TEST_WORKERS)", makefile)

    def test_every_environment_variable_in_the_code_is_documented(self) -> None:
        for option in OPTION_TABLE:
            if option.env:
                self.assertIn(f"`{option.env}", self.readme, option.env)
        self.assertIn("`PIPELINE_CONFIG`", self.readme)

    def option_rows(self) -> dict[str, list[str]]:
        """The README's option table: its long flag -> the row's cells."""
        section = self.readme.split("## Options and environment variables", 1)[1].split("\n## ", 1)[0]
        rows: dict[str, list[str]] = {}
        for line in section.splitlines():
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            flags = re.findall(r"`(--?[a-z][a-z-]*)", cells[0]) if cells else []
            if flags:
                rows[flags[-1]] = cells
        return rows

    def test_the_readme_option_table_is_the_option_table(self) -> None:
        rows = self.option_rows()
        self.assertEqual(sorted(rows), sorted([o.flag for o in OPTION_TABLE] + ["--help", "--version"]))
        for option in OPTION_TABLE:
            expected = f"`{option.env_text}`" if option.env_text else ""
            self.assertEqual(rows[option.flag][1], expected, option.flag)
            if option.metavar:
                self.assertIn(f"`{option.flag} {option.metavar}`", self.readme.replace("\\|", "|"), option.flag)

    def test_each_default_the_table_shows_is_the_settings_default(self) -> None:
        defaults = Settings()
        for option in OPTION_TABLE:
            if option.default is None or option.parse is None:
                continue
            value = option.parse(option.default)
            held = defaults.vs_currencies if option.name == "vs_currency" else getattr(defaults, option.name)
            self.assertEqual(value, held, option.name)


if __name__ == "__main__":
    unittest.main()
