"""The README's query of the history: the Athena SQL and the Polars block run the same query, and the Polars
block, as printed, answers it on a Delta table the pipeline wrote."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unittest
from datetime import datetime, timedelta, timezone

from tests.fake_coingecko import markets_rows
from tests.support import REPO, PipelineTestCase

# Whether the example can run, without importing polars (a third of a second) into every test process.
polars = importlib.util.find_spec("polars")  # None where polars is not installed (it is in requirements-dev.txt)


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Query the history")
    return text[start : text.index("\n## ", start)]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def normalized(sql: str) -> str:
    return " ".join(sql.split())


class QueryExamples(PipelineTestCase):
    def test_the_athena_and_the_polars_query_are_the_same(self) -> None:
        [athena] = blocks(readme_section(), "sql")
        [python] = blocks(readme_section(), "python")
        [polars_sql] = re.findall(r'query = """\n(.*?)"""', python, re.S)
        self.assertEqual(
            normalized(athena).replace("FROM crypto_history.history", "FROM history"), normalized(polars_sql)
        )
        self.assertIn("crypto_history", (REPO / "template.yaml").read_text())  # the Glue database it names

    @unittest.skipIf(polars is None, "polars is not installed (requirements-dev.txt)")
    def test_the_polars_block_answers_on_a_table_the_pipeline_wrote(self) -> None:
        now = datetime.now(timezone.utc)
        self.fake.set_coins(markets_rows(5, start=now - timedelta(hours=3)))
        self.env.update(
            {"PIPELINE_TABLE_FORMAT": "delta", "PIPELINE_COINS": ",".join(r["id"] for r in self.fake.coins)}
        )
        for _ in range(3):
            self.fake.advance(600)
            result = self.run_main("run")
            self.assertEqual(result.code, 0, result.stderr)
        [python] = blocks(readme_section(), "python")
        done = subprocess.run(
            [sys.executable, "-c", python], cwd=self.data_dir, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("shape: (5, 6)", done.stdout)
        for row in self.fake.coins:
            month = row["last_updated"][:7]  # the partition the rows went to
            self.assertRegex(done.stdout, rf"{row['id']}\s*┆\s*{month}\s*┆.*┆\s*3\s*┆")


if __name__ == "__main__":
    unittest.main()
