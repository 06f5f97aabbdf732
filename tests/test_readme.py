"""The README documents every command-line option that `--help` shows, and the set-up and test commands CI runs."""

from __future__ import annotations

import argparse
import re
import unittest

from tests.support import REPO, cli


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
        self.assertIn("\t$(BIN)/python -m unittest discover -s tests", (REPO / "Makefile").read_text())

    def test_every_environment_variable_in_the_code_is_documented(self) -> None:
        from utils.settings import OPTIONS
        for env_name, _ in OPTIONS.values():
            if env_name:
                self.assertIn(f"`{env_name}", self.readme, env_name)
        self.assertIn("`PIPELINE_CONFIG`", self.readme)


if __name__ == "__main__":
    unittest.main()
