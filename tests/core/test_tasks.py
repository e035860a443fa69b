"""cancel_and_wait: the tasks end, the caller's own cancel is never lost."""

import asyncio

import pytest

from conveyor_core.tasks import cancel_and_wait


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_the_tasks_are_cancelled_and_have_ended() -> None:
    tasks = [asyncio.create_task(_forever()) for _ in range(3)]
    await asyncio.sleep(0)  # each one under way
    await cancel_and_wait(*tasks)
    assert all(task.cancelled() for task in tasks)


async def test_a_task_that_already_ended_is_fine() -> None:
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait(done)
    await cancel_and_wait()


async def test_a_task_that_failed_raises_its_error() -> None:
    async def fail() -> None:
        raise RuntimeError("broken")

    failed = asyncio.create_task(fail())
    running = asyncio.create_task(_forever())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broken"):
        await cancel_and_wait(failed, running)
    assert running.cancelled()


async def test_the_callers_own_cancel_is_not_swallowed() -> None:
    """A task slow to end (it cleans up after its cancel); the caller waiting
    for it is cancelled meanwhile and must end cancelled, not carry on."""
    cleaning = asyncio.Event()
    cleaned = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await cleaned.wait()
            raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    carried_on = asyncio.Event()

    async def caller() -> None:
        await cancel_and_wait(task)
        carried_on.set()

    waiting = asyncio.create_task(caller())
    await cleaning.wait()  # the task has its cancel; the caller waits for it to end
    waiting.cancel()
    cleaned.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert waiting.cancelled()
    assert not carried_on.is_set()
    await asyncio.wait({task})
    assert task.cancelled()


async def test_a_task_that_outlives_its_cancel_is_waited_for_no_longer_than_the_bound() -> None:
    """A cancel the task loses (it runs on to its own end): the wait ends at
    `timeout_s`, the task still running, and nothing is raised."""
    release = asyncio.Event()

    async def loses_its_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()

    task = asyncio.create_task(loses_its_cancel())
    await asyncio.sleep(0)
    await cancel_and_wait(task, timeout_s=0.05)
    assert not task.done()
    release.set()
    await task
    assert not task.cancelled()
