"""A long job that checkpoints, with real workers: SIGTERMed or SIGKILLed
halfway, it resumes at its last checkpoint and does no item twice past it."""

import signal
import time
from collections import Counter
from typing import Any, cast

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

ITEMS = 1000
EVERY = 100
PAYLOAD = {"items": ITEMS, "every": EVERY, "step_s": 0.004}


def items_done(stack: Stack, job_id: str) -> list[int]:
    """The items the job's tries finished, in order (recorded by the job)."""
    return [int(n) for n in cast(list[bytes], stack.redis.lrange(f"test:items:{job_id}", 0, -1))]


def halfway(stack: Stack, job_id: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while len(items_done(stack, job_id)) < ITEMS // 2:
        assert time.monotonic() < deadline, f"the job never got halfway\n{stack.logs()}"
        time.sleep(0.01)


def checkpoint_of(job: dict[str, Any]) -> dict[str, Any]:
    saved: dict[str, Any] | None = job["checkpoint"]
    assert saved is not None, job
    return saved


def test_sigterm_halfway_resumes_at_the_checkpoint_and_repeats_no_item(stack: Stack) -> None:
    worker = stack.start_worker()
    job_id = stack.submit("iterating", PAYLOAD)["id"]
    halfway(stack, job_id)

    assert worker.stop(signal.SIGTERM) == 0
    back = stack.job(job_id)
    # Handed back at once (the handler saved where it was), the try not counted.
    assert (back["state"], back["tries"]) == ("queued", 0)
    before = items_done(stack, job_id)
    saved = checkpoint_of(back)
    assert ITEMS // 2 <= saved["cursor"] == len(before) < ITEMS
    assert (saved["done"], saved["total"], saved["try_number"]) == (len(before), ITEMS, 1)

    stack.start_worker()
    done = stack.wait_for_state(job_id, "complete")

    assert (done["tries"], done["result"], done["progress"]["percent"]) == (
        1,
        ITEMS - len(before),
        100,
    )
    assert checkpoint_of(done)["cursor"] == ITEMS
    assert items_done(stack, job_id) == list(range(ITEMS))  # each item once, in order


def test_sigkill_halfway_resumes_at_the_last_checkpoint_and_repeats_only_what_followed_it(
    stack: Stack,
) -> None:
    # A short lock: the dead worker's job is claimed again within a second or two.
    worker = stack.start_worker(CONVEYOR_WORKER_LOCK_TTL_S="1")
    job_id = stack.submit("iterating", PAYLOAD)["id"]
    halfway(stack, job_id)

    worker.stop(signal.SIGKILL)
    killed_at = len(items_done(stack, job_id))
    saved = checkpoint_of(stack.job(job_id))
    # The last one, every 100 (or the one before, when killed between an item and its save).
    assert saved["cursor"] % EVERY == 0
    assert 0 <= killed_at - saved["cursor"] <= EVERY

    stack.start_worker(CONVEYOR_WORKER_LOCK_TTL_S="1")
    done = stack.wait_for_state(job_id, "complete")

    assert done["tries"] == 2
    assert checkpoint_of(done)["cursor"] == ITEMS
    counts = Counter(items_done(stack, job_id))
    assert sorted(counts) == list(range(ITEMS))
    # Twice: only the items the killed try did after its last checkpoint.
    assert sorted(n for n, c in counts.items() if c > 1) == list(range(saved["cursor"], killed_at))
    assert max(counts.values()) <= 2
