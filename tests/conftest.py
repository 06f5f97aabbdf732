"""`make test-fast`: the edit-and-test loop, within 90 s on 2 cores. `make test` and CI run everything.

test-fast leaves out three whole modules (the Makefile's SLOW_MODULES), the parts of checks marked
`slow_part` (tests/support.py), and the tests below: each took 2 s or more of a worker in `make test-fast`
on this 2-core machine (pytest --durations, idle), and each has a quicker test of the same code that stays
in the fast tier. The reason says what the test adds; `make test` runs them all.
tests/test_setup.py checks that every name here is still a test.
"""

from __future__ import annotations

import pytest

from tests.support import TEST_FAST

# test id (as pytest names it, from tests/) -> what it adds over the fast tier
FULL_SUITE_ONLY: dict[str, str] = {
    # the Lambda chain end to end on moto: the fast tier keeps its other tests of the chain
    "test_aws.py::LambdaChain::test_a_currency_that_fails_leaves_the_others_and_makes_the_run_partial": (
        "a partial chain run"
    ),
    "test_aws.py::LambdaChain::test_cli_run_and_backfill_on_s3": "the CLI's run and backfill on the CSV object",
    "test_aws.py::LambdaChain::test_every_currency_is_fetched_and_drawn_with_the_report_beside_the_history": (
        "the Charts step's every currency"
    ),
    # a simulated clock at full size (the races of eight runs and a backfill, and of concurrent commands, stay)
    "test_backfill.py::Pacing::test_100_coins_at_30_per_minute_trigger_no_429": "the pacing over 100 coins x 365 days",
    # property tests whose smaller siblings stay
    "test_csvio_chunks.py::ChunkedReadTest::test_chunks_of_any_size_give_the_whole_file_read": "chunk sizes 1 to 64 KB",
    "test_fast_index.py::AppendedEqualsRebuilt::test_runs_of_days_in_any_order": "random day orders",
    "test_fast_index.py::FastPathTest::test_any_chunking_and_any_odd_line_give_the_careful_read": (
        "random chunkings with odd lines"
    ),
    "test_merge_stream.py::MergeStreamTest::test_random_files_merge_as_the_reference_does": "300 random files",
    "test_quality.py::HistoryShortcut::test_the_shortcut_finds_what_the_timelines_find": "the differential property",
    # the files policy matrix: the fast tier keeps the symlink column for every managed file
    "test_files_policy.py::FilesPolicy::test_every_managed_file_as_a_folder": "the folder column",
    "test_files_policy.py::FilesPolicy::test_every_managed_file_immutable": "the immutable column",
    "test_files_policy.py::FilesPolicy::test_every_managed_file_with_an_oversized_cell": "the oversized-cell column",
    "test_files_policy.py::FilesPolicy::test_every_managed_file_with_binary_junk": "the binary-junk column",
    # waits that are real time: retries, lock timeouts, a webhook that never answers
    "test_first_hour.py::Offline::test_a_refused_connection_is_tried_three_times_and_fails_with_one_line": (
        "three attempts with their real back-off"
    ),
    "test_hardening.py::IndexWait::test_a_held_index_honours_lock_timeout": "a lock timeout waited out",
    "test_hardening.py::Shutdown::test_run_prints_its_summary_before_a_webhook_that_never_answers_times_out": (
        "a webhook's timeout waited out"
    ),
    "test_hostile_input.py::S3Errors::test_no_endpoint": "delta-rs' own retries against a closed port",
    "test_hostile_input.py::CorruptStatusFile::test_the_daemon_starts_whatever_status_json_holds": (
        "a daemon started on each corruption"
    ),
    "test_security.py::TlsVerification::test_a_self_signed_server_is_refused": "a TLS server and its handshakes",
    # charts of several currencies and label fitting: the fast tier draws one currency's charts
    "test_first_hour.py::ChartsPerCurrency::test_plot_in_the_second_currency_keeps_both_sets": "two chart sets",
    "test_first_hour.py::TrackedIsTheLastSelection::test_status_charts_and_report_follow_the_last_run": (
        "status, charts and report after three selections"
    ),
    "test_plot.py::SeveralCurrencies::test_a_run_in_usd_beside_an_eur_history_keeps_both_chart_sets": "two chart sets",
    "test_plot.py::PlotCommand::test_a_run_draws_the_charts_unless_told_not_to": "a run's charts, on and off",
    "test_visualization.py::CurrenciesTest::test_a_run_draws_every_currency_and_the_first_keeps_the_plain_names": (
        "three currencies' charts"
    ),
    "test_visualization.py::TickLabelTest::test_labels_never_overlap_with_9_coins": "every window and scale, 9 coins",
    "test_hostile_input.py::FileErrors::test_plot_into_a_read_only_folder": "a plot refused midway",
    "test_report.py::Report::test_changes_come_from_the_daily_points": "a report over 30 days of points",
    # the commands on each table format: the fast tier keeps the others of these classes
    "test_table_formats.py::CommandsOnCsv::test_status_top_plot_quality_report": "five commands on the CSV",
    "test_table_formats.py::CommandsOnDelta::test_status_top_plot_quality_report": "five commands on the table",
    "test_table_formats.py::CommandsOnDelta::test_a_full_disk_during_the_write_leaves_the_table_unchanged": (
        "a full disk during a Delta commit"
    ),
    "test_table_formats.py::CommandsOnDelta::test_exit_codes_survive_interpreter_teardown": (
        "exit codes through delta-rs' teardown"
    ),
    "test_market.py::TopAll::test_a_delisted_coin_is_gone_since_its_last_day_and_keeps_its_history": (
        "a coin delisted over 10 days of runs (the fast tier keeps paging and the ledger)"
    ),
    "test_load.py::IndexFileTest::test_missing_or_corrupt_index_is_rebuilt_without_duplicates": (
        "each corruption of the index"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not TEST_FAST:
        return
    for item in items:
        why = FULL_SUITE_ONLY.get(item.nodeid.removeprefix("tests/"))
        if why:
            item.add_marker(pytest.mark.skip(reason=f"left out of make test-fast (make test runs it): {why}"))
