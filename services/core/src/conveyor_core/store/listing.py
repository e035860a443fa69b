"""Listing jobs by state and filter, a bounded scan per page."""

import asyncio
from collections.abc import Callable
from typing import Any

from conveyor_core import keys
from conveyor_core.jobs import (
    TERMINAL_STATES,
    JobPublic,
    JobState,
    now_ms,
)
from conveyor_core.scores import PRIORITIES, band_range
from conveyor_core.store.filters import (
    SCAN_BUDGET_PER_ITEM,
    JobFilter,
    _Segment,
    _waiting,
    decode_cursor,
    encode_cursor,
)
from conveyor_core.store.reads import Reads
from conveyor_core.store.results import Page


class Listing(Reads):
    """Pages of jobs."""

    def _segments(self, state: JobState | None, queues: list[str], at_ms: int) -> list[_Segment]:
        def index(name: str) -> Callable[[str], str]:
            return lambda queue: keys.index_key(queue, name)

        def arq_queue(queue: str) -> str:
            return queue

        final = [_Segment(queues, index(s.value), descending=True) for s in TERMINAL_STATES]
        bands = [band_range(p) for p in PRIORITIES]
        match state:
            case JobState.QUEUED:  # what is due, by priority, each in due order
                return [
                    _Segment(queues, arq_queue, False, str(lo), str(lo + at_ms), _waiting)
                    for lo, _ in bands
                ]
            case JobState.DEFERRED:
                return [
                    _Segment(queues, arq_queue, False, f"({lo + at_ms}", f"({hi}", _waiting)
                    for lo, hi in bands
                ]
            case JobState.IN_PROGRESS | JobState.RETRYING:
                return [_Segment(queues, index(state.value), descending=False)]
            case JobState.COMPLETE | JobState.DEAD | JobState.CANCELLED:
                return [_Segment(queues, index(state.value), descending=True)]
            case None:
                # What runs, then what waits (next due first), then what finished
                # (latest to expire first).
                return [
                    _Segment(queues, index(JobState.IN_PROGRESS.value), descending=False),
                    _Segment(
                        queues,
                        arq_queue,
                        False,
                        accepts=lambda j: j.state is not JobState.IN_PROGRESS,
                    ),
                    *final,
                ]

    async def _rows(
        self, segment: _Segment, after: tuple[str, str], count: int
    ) -> list[tuple[str, str, str]]:
        """Up to `count` (id, score, queue) of a segment strictly after `after`, merged."""
        args = ["desc" if segment.descending else "asc", segment.lo, segment.hi, *after, count]
        replies: list[Any]
        if self.one_slot_per_call:
            # A cluster pipeline takes no scripts: one call per queue, at once.
            replies = await asyncio.gather(
                *(self._page(keys=[segment.key(queue)], args=args) for queue in segment.queues)
            )
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in segment.queues:
                    await self._page(keys=[segment.key(queue)], args=args, client=pipe)
                replies = await pipe.execute()
        rows = [
            (reply[i].decode(), reply[i + 1].decode(), queue)
            for queue, reply in zip(segment.queues, replies, strict=True)
            for i in range(0, len(reply), 2)
        ]
        rows.sort(key=lambda r: (float(r[1]), r[0]), reverse=segment.descending)
        return rows[:count]

    async def _screen(
        self, rows: list[tuple[str, str, str]], where: JobFilter | None
    ) -> list[tuple[str, str, str]]:
        """The rows `where` may match, judged by each job's last error (one round
        trip, one field per job), when that can rule jobs out: so a search reads
        whole jobs, payloads included, only for its likely matches."""
        if where is None or not where.screens_by_error() or not rows:
            return rows
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, _, _ in rows:
                pipe.hget(keys.job_key(job_id), "error")
            errors = await pipe.execute()
        return [r for r, e in zip(rows, errors, strict=True) if where.may_match(r[0], e)]

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        where: JobFilter | None = None,
    ) -> Page:
        """Jobs in `state` (or all: running, then waiting, then finished).

        Waiting, running and retrying jobs come next-to-run first; finished ones
        latest first (by when their record expires: for one retention, the
        order they finished in). Reads at most `limit * SCAN_BUDGET_PER_ITEM`
        entries, so a rare `job_type` can give a short page; `next_cursor`
        then goes on from there. `where` filters further (its state, queue and
        type stand in for the arguments), with the same bound; a filter on
        the last error (its type, or a text) reads whole jobs only for the
        entries that error may match (see `_screen`).
        """
        if where is not None:
            state, queue, job_type = where.state, where.queue, where.job_type
        at_ms = now_ms()
        # Every shard of each queue: a page reads a bounded count from each, merged.
        queues = self.catalog.shards(queue) if queue else self.catalog.all_shards()
        segments = self._segments(state, queues, at_ms)
        segment_no, score, after_id = decode_cursor(cursor) if cursor else (0, "", "")
        items: list[JobPublic] = []
        budget = limit * SCAN_BUDGET_PER_ITEM
        while segment_no < len(segments) and budget > 0:
            segment = segments[segment_no]
            batch = min(budget, max(limit - len(items), 10))
            rows = await self._rows(segment, (score, after_id), batch)
            screened = await self._screen(rows, where)
            found = await self._read_many(((r[0], r[2]) for r in screened), at_ms)
            read = {r[0]: f[1] for r, f in zip(screened, found, strict=True) if f}
            jobs = [read.get(r[0]) for r in rows]
            for (row_id, row_score, _), job in zip(rows, jobs, strict=True):
                budget -= 1
                score, after_id = row_score, row_id
                wanted = job is not None and (
                    where.matches(job) if where else job_type in (None, job.job_type)
                )
                if job is not None and wanted and segment.accepts(job):
                    items.append(job)
                if len(items) == limit:
                    scanned = limit * SCAN_BUDGET_PER_ITEM - budget
                    return Page(items, encode_cursor(segment_no, score, after_id), scanned)
            if len(rows) < batch:  # this segment is exhausted: on to the next
                segment_no, score, after_id = segment_no + 1, "", ""
        scanned = limit * SCAN_BUDGET_PER_ITEM - budget
        if segment_no >= len(segments):
            return Page(items, None, scanned)
        return Page(items, encode_cursor(segment_no, score, after_id), scanned)
