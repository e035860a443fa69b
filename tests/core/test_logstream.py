"""Log lines reach the stream by the end of the loop's turn, one flush per turn
and at most one per FLUSH_INTERVAL_S, also when stdout itself is unbuffered."""

import asyncio
import io
import logging
from pathlib import Path

import pytest

from conveyor_core import logstream
from conveyor_core.logstream import FLUSH_INTERVAL_S, TurnFlushingHandler, buffered


class Pipe(io.StringIO):
    """A stream that keeps only what was flushed, as a pipe's reader sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = ""
        self.flushes = 0

    def flush(self) -> None:
        self.flushed = self.getvalue()
        self.flushes += 1


def logger_to(stream: Pipe) -> logging.Logger:
    logger = logging.getLogger(f"test.logstream.{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [TurnFlushingHandler(stream)]
    logger.setLevel(logging.INFO)
    return logger


async def test_a_turns_lines_are_flushed_together_at_its_end() -> None:
    pipe = Pipe()
    logger = logger_to(pipe)
    for n in range(3):
        logger.info("line %d", n)
    assert pipe.flushed == ""  # still this turn
    await asyncio.sleep(0)
    assert pipe.flushed == "line 0\nline 1\nline 2\n"
    assert pipe.flushes == 1
    await asyncio.sleep(2 * FLUSH_INTERVAL_S)  # quiet since
    logger.info("next turn")
    await asyncio.sleep(0)
    assert pipe.flushed.endswith("next turn\n")
    assert pipe.flushes == 2


async def test_a_busy_loops_lines_are_written_once_per_interval_and_wait_no_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interval_s = 0.5  # longer than any stall of a loaded machine between two turns
    monkeypatch.setattr(logstream, "FLUSH_INTERVAL_S", interval_s)
    pipe = Pipe()
    logger = logger_to(pipe)
    logger.info("first")
    await asyncio.sleep(0)
    assert pipe.flushes == 1
    for turn in range(5):  # five busy turns, a line each
        logger.info("turn %d", turn)
        await asyncio.sleep(0)
    assert pipe.flushes == 1  # within the interval: held
    assert pipe.flushed == "first\n"
    await asyncio.sleep(interval_s)
    assert pipe.flushes == 2  # one write for all of them
    assert pipe.flushed.endswith("turn 3\nturn 4\n")


def test_without_a_running_loop_each_line_is_flushed_at_once() -> None:
    pipe = Pipe()
    logger = logger_to(pipe)
    logger.info("one")
    assert pipe.flushed == "one\n"


def test_a_loop_that_stopped_mid_turn_does_not_hold_the_next_loops_lines() -> None:
    pipe = Pipe()
    logger = logger_to(pipe)

    async def log_and_stop(message: str) -> None:
        logger.info(message)
        asyncio.get_running_loop().stop()  # the flush's turn never comes

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(log_and_stop("first"))
        loop.run_forever()
        assert task.done()
    finally:
        loop.close()

    async def log(message: str) -> None:
        logger.info(message)
        await asyncio.sleep(0)

    asyncio.run(log("second"))
    assert pipe.flushed == "first\nsecond\n"


async def test_an_unbuffered_stdout_still_gets_a_turns_lines_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "stdout"
    # What PYTHONUNBUFFERED makes of sys.stdout: every write goes through.
    with io.TextIOWrapper(io.FileIO(path, "w"), write_through=True) as unbuffered:
        logger = logging.getLogger(f"test.logstream.unbuffered.{id(unbuffered)}")
        logger.propagate = False
        logger.handlers[:] = [TurnFlushingHandler(buffered(unbuffered))]
        logger.setLevel(logging.INFO)
        for n in range(3):
            logger.info("line %d", n)
        assert path.read_text() == ""  # still this turn
        await asyncio.sleep(0)
        assert path.read_text() == "line 0\nline 1\nline 2\n"


def test_a_stream_without_a_file_is_used_as_it_is() -> None:
    pipe = Pipe()
    assert buffered(pipe) is pipe
