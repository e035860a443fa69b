"""Where log lines go: stdout, flushed at the end of the event loop's turn,
at most once per FLUSH_INTERVAL_S.

A StreamHandler flushes after every line, one write to the pipe per line: on
a worker running small jobs flat out that write is a large share of what a
log line costs. Here a line is written to the stream's buffer at once and the
buffer is flushed at the end of the event loop's current turn, so a turn
writes all its lines in one go. A busy loop ends a turn or two per job, and a
write per turn (a system call, and the call scheduled for it) was still a
large share of a job's line: so a flush comes at the end of the turn if the
last one is FLUSH_INTERVAL_S old, else that long after the last one. A quiet
process's line is written at the end of its turn; a busy one's waits
FLUSH_INTERVAL_S at most, and its lines go out a few dozen to a write. Lines
from a thread without a running loop (an exporter's, or a process before its
loop starts) are flushed at once, as StreamHandler does (or with the loop's
flush, when one is due); what is buffered at
exit (and on SIGTERM/SIGINT, `flush_then_die_by`) is flushed too.

The handler writes to a buffer of its own over stdout's file (`buffered`):
with PYTHONUNBUFFERED set (as the images set it, so that a crash's traceback
is never lost) sys.stdout writes each line through, a write per line, and
a flush per turn would have nothing to gather.
"""

import asyncio
import io
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TextIO

# Bytes of lines a turn may gather before they are written anyway.
BUFFER_BYTES = 64 * 1024
# A busy loop's lines are written at most this often (and wait at most this long).
FLUSH_INTERVAL_S = 0.01


def buffered(stream: TextIO) -> TextIO:
    """A buffered text stream over `stream`'s file, which stays open; `stream`
    itself if it has no file (a test's capture)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return stream
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw, BUFFER_BYTES), encoding="utf-8", errors="backslashreplace"
    )


class TurnFlushingHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        # The loop a flush is due on; a loop that stopped before its turn
        # ended is not waited for.
        self._due_on: asyncio.AbstractEventLoop | None = None
        # When the last flush from a loop was (monotonic).
        self._flushed_s = 0.0

    def write_line(self, line: str) -> None:
        """A formatted line, written as `emit` writes a record's."""
        try:
            with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
                self.stream.write(line + self.terminator)
                due_on = self._due_on
                # A flush already due on a running loop writes this line too.
                if due_on is None or not due_on.is_running():
                    self.flush()
        except Exception:  # as logging does: a broken stream costs the line, not the job
            self.handleError(logging.makeLogRecord({"msg": line}))

    def flush(self) -> None:
        """Called after each line (and by logging's shutdown)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: now
            super().flush()
            return
        if self._due_on is not loop:
            self._due_on = loop
            wait_s = self._flushed_s + FLUSH_INTERVAL_S - time.monotonic()
            if wait_s > 0:  # busy: one write per interval
                loop.call_later(wait_s, self._flush_now)
            else:
                loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._due_on = None
        self._flushed_s = time.monotonic()
        super().flush()

    def flush_now(self) -> None:
        """Write what is buffered at once, whatever loop runs (a process about to die)."""
        self._flush_now()


def flush_all() -> None:
    """Write every handler's buffered lines now: before a last line of the
    process's own (a refusal to start) that must come after them."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TurnFlushingHandler):
            handler.flush_now()


def flush_then_die_by(*signals: signal.Signals, before: Callable[[], None] = lambda: None) -> None:
    """Make these signals, when they end the process, flush what is buffered
    first. A server that re-raises the signal it stopped on (uvicorn does, after
    its graceful shutdown) dies by it, and a death by a signal runs no exit
    handler: the lines of the last turn, shutdown's own among them, and the
    spans still buffered would be lost."""

    def flush_and_die(signum: int, frame: FrameType | None) -> None:
        before()
        # The loop may still run here (uvicorn re-raises from inside it): a
        # flush due at the end of its turn would never come.
        flush_all()
        logging.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    for sig in signals:
        signal.signal(sig, flush_and_die)
