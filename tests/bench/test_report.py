"""`make bench`'s page writer: the machine, the date and each report as printed."""

from datetime import UTC, datetime

from bench import report
from bench.report import Machine

MACHINE = Machine(
    cores=2, cpu="Test CPU @ 2.0GHz", python="3.11.2", redis="redis 7.0.15", system="Linux 6.1"
)


def test_progress_lines_are_dropped_and_the_tables_kept() -> None:
    output = "throughput round 1: arq ...\n| worker | p50 |\n| --- | --- |\n| arq | 1 ms |\n"
    assert report.report_lines(output) == "| worker | p50 |\n| --- | --- |\n| arq | 1 ms |"


def test_the_page_names_the_machine_the_date_and_each_bench() -> None:
    when = datetime(2026, 11, 29, 21, 5, tzinfo=UTC)
    text = report.page(MACHINE, when, [("Worker", "bench.pickup", "| a | b |")])
    assert text.startswith("# Benchmarks\n")
    for row in (
        "| date | 2026-11-29 21:05 UTC |",
        "| cores | 2 |",
        "| CPU | Test CPU @ 2.0GHz |",
        "| Python | 3.11.2 |",
        "| Redis | redis 7.0.15 |",
    ):
        assert row in text
    assert "## Worker\n\n`python -m bench.pickup`:\n\n```\n| a | b |\n```\n" in text


def test_this_machine_reads_a_real_redis_version() -> None:
    machine = report.this_machine()
    assert machine.cores >= 1
    assert machine.redis.split()[0] in ("redis", "valkey")
    assert machine.redis.split()[1][0].isdigit()


def test_the_committed_page_was_written_by_the_writer() -> None:
    text = report.PAGE.read_text()
    assert text.startswith("# Benchmarks\n")
    assert report.INTRO in text
