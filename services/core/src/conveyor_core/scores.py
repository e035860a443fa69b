"""Score maths: a job's place in arq's queue is its priority's band, then its due time.

A priority is a band of scores in arq's queue: score = band * PRIORITY_BAND_MS
+ due ms, band = priority - DEFAULT_PRIORITY. A band is wider than any due
time (10^13 ms is the year 2286), so bands never overlap; every score stays
an exact integer in a double. A bare arq client's score is the due time, band
0: its jobs get DEFAULT_PRIORITY. lua/lib/scores.lua does the same sums in Redis.
"""

import math

from conveyor_core.jobs import DEFAULT_PRIORITY, HIGHEST_PRIORITY, LOWEST_PRIORITY

PRIORITY_BAND_MS = 10**13
PRIORITIES = range(HIGHEST_PRIORITY, LOWEST_PRIORITY + 1)


def queue_score(priority: int, due_ms: int) -> int:
    """A job's score in arq's queue: its priority's band, then its due time."""
    return (priority - DEFAULT_PRIORITY) * PRIORITY_BAND_MS + due_ms


def split_score(score: float) -> tuple[int, int]:
    """(priority, due ms) of a score in arq's queue."""
    band = math.floor(score / PRIORITY_BAND_MS)
    due_ms = int(score) - band * PRIORITY_BAND_MS
    return min(max(band + DEFAULT_PRIORITY, HIGHEST_PRIORITY), LOWEST_PRIORITY), due_ms


def band_range(priority: int) -> tuple[int, int]:
    """The scores of one priority: [lowest, highest) ."""
    lo = queue_score(priority, 0)
    return lo, lo + PRIORITY_BAND_MS
