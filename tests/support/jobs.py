"""Job types for tests, loaded by both services through CONVEYOR_JOB_MODULES.

Each records what happened in Redis under `test:` keys, so a test reads the
truth from Redis rather than from logs.
"""

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from arq.worker import Retry
from pydantic import BaseModel, Field

from conveyor_core.catalog import JobType, PermanentJobError, RetryPolicy
from conveyor_core.context import JobContext
from conveyor_core.flow import Limits, Rate
from conveyor_core.groups import Call, ChildFailure, FailurePolicy
from conveyor_core.jobs import JobState
from conveyor_core.resources import Resource, ResourceScope
from conveyor_core.snooze import RateLimited, Snooze
from conveyor_core.store import JobStore
from conveyor_seed import SendEmail

MODULE = "tests.support.jobs"
# What the services load in tests: the seed app and the test job types.
MODULES = f"conveyor_seed,{MODULE}"


class Nothing(BaseModel):
    pass


class Flaky(BaseModel):
    fail_times: int = Field(ge=0)


class Slow(BaseModel):
    steps: int = Field(ge=1, le=1000)
    step_s: float = Field(ge=0)


class Signup(BaseModel):
    email: str
    password: str
    name: str


class Effect(BaseModel):
    work_s: float = Field(ge=0)


class Tick(Effect):
    """A scheduled run's payload: none given, so a default."""

    work_s: float = Field(default=1.5, ge=0)


class Deferring(BaseModel):
    defer_s: float = Field(ge=0)


async def _record_start(ctx: JobContext) -> None:
    await ctx.redis.rpush(f"test:starts:{ctx.job_id}", repr(time.time()))  # type: ignore[misc]
    await ctx.redis.rpush(f"test:tries:{ctx.job_id}", ctx.job_try)  # type: ignore[misc]


async def flaky(ctx: JobContext, payload: Flaky) -> int:
    """Fails its first `fail_times` tries, then succeeds."""
    await _record_start(ctx)
    if ctx.job_try <= payload.fail_times:
        raise RuntimeError(f"flaky: try {ctx.job_try} fails on purpose")
    return ctx.job_try


async def doomed(ctx: JobContext, payload: Nothing) -> str:
    """Fails every try until a test sets `test:healed:{job_id}`."""
    await _record_start(ctx)
    if not await ctx.redis.exists(f"test:healed:{ctx.job_id}"):
        raise RuntimeError("boom")
    return "healed"


async def deferring(ctx: JobContext, payload: Deferring) -> int:
    """Asks arq's way for another try (`Retry(defer=...)`) on its first try."""
    await _record_start(ctx)
    if ctx.job_try == 1:
        raise Retry(defer=payload.defer_s)
    return ctx.job_try


class Doomed(BaseModel):
    """How long a doomed try works before it fails."""

    work_s: float = Field(default=0, ge=0)


async def permanent(ctx: JobContext, payload: Doomed) -> None:
    await _record_start(ctx)
    await asyncio.sleep(payload.work_s)
    raise PermanentJobError("this input can never work")


async def slow(ctx: JobContext, payload: Slow) -> int:
    """Reports progress after each step."""
    await _record_start(ctx)
    for step in range(1, payload.steps + 1):
        await asyncio.sleep(payload.step_s)
        await ctx.progress(step * 100 // payload.steps, f"step {step} of {payload.steps}")
    await ctx.redis.set(f"test:finished:{ctx.job_id}", "1")
    return payload.steps


# Mark the job's effect and count it in one atomic step, so a kill between
# the two cannot leave one without the other. The mark's hash tag is the
# counter's name, so both share a slot on a cluster too.
APPLY_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX') then redis.call('INCR', KEYS[2]) end
"""


def effect_key(job_id: str) -> str:
    """Where `effect` marks a job's effect as applied (in `test:effects`' slot)."""
    return f"{{test:effects}}:{job_id}"


async def effect(ctx: JobContext, payload: Effect) -> str:
    """Idempotent by design: the side effect is keyed by job id and applied once."""
    await _record_start(ctx)
    await asyncio.sleep(payload.work_s)
    await ctx.redis.eval(APPLY_ONCE, 2, effect_key(ctx.job_id), "test:effects")  # type: ignore[misc]
    await ctx.redis.set(f"test:done_at:{ctx.job_id}", repr(time.time()), nx=True)
    return "done"


class Bulky(BaseModel):
    data: str
    # Return the data as the result too (a large result, offloaded as well).
    echo: bool = False


# Above this, a `bulky` job's payload and result are offloaded to the blob store.
BULKY_OFFLOAD_BYTES = 1024


async def bulky(ctx: JobContext, payload: Bulky) -> dict[str, Any]:
    """What the handler got: its payload's size and checksum (and the data, echoed)."""
    digest = hashlib.sha256(payload.data.encode()).hexdigest()
    return {
        "size": len(payload.data),
        "sha256": digest,
        "echo": payload.data if payload.echo else "",
    }


class Tenanted(BaseModel):
    tenant_id: str
    work_s: float = Field(ge=0)


def running_key(subject: str) -> str:
    """How many `tracked` jobs of `subject` run now; its hash tag is the name of
    their highest count (`test:max_running:{subject}`), so both share a slot."""
    return f"{{test:max_running:{subject}}}:running"


# Count the job in while it runs, and keep the highest count seen, in one step.
RUN_IN = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


async def tracked(ctx: JobContext, payload: Effect | Tenanted) -> str:
    """Counts itself running (per type, and per tenant when it has one) while it works,
    keeping the highest counts in `test:max_running:...`, and logs its completion."""
    await _record_start(ctx)
    subjects = [ctx.job_type.name]
    if isinstance(payload, Tenanted):
        subjects.append(f"{ctx.job_type.name}:{payload.tenant_id}")
    for subject in subjects:
        await ctx.redis.eval(RUN_IN, 2, running_key(subject), f"test:max_running:{subject}")  # type: ignore[misc]
    try:
        await asyncio.sleep(payload.work_s)
    finally:
        for subject in subjects:
            await ctx.redis.decr(running_key(subject))
    await ctx.redis.rpush(f"test:completed:{ctx.job_type.name}", ctx.job_id)  # type: ignore[misc]
    return "done"


async def tracked_tenant(ctx: JobContext, payload: Tenanted) -> str:
    return await tracked(ctx, payload)


class Snoozing(BaseModel):
    snoozes: int = Field(ge=0)
    delay_s: float = Field(default=0.05, ge=0)


async def snoozing(ctx: JobContext, payload: Snoozing) -> int:
    """Snoozes `snoozes` times (raising, then returning the request), then completes."""
    await _record_start(ctx)
    n = await ctx.redis.incr(f"test:snoozed:{ctx.job_id}")
    if n <= payload.snoozes:
        if n % 2:
            raise Snooze(payload.delay_s, f"waiting, {n}")
        return Snooze(payload.delay_s)  # type: ignore[return-value]
    return ctx.job_try


class Partner(BaseModel):
    tenant_id: str
    # The partner answers 429 with this Retry-After to the job's first try; 0: never.
    retry_after_s: float = Field(default=0, ge=0)
    scope: str = "key"


async def partner(ctx: JobContext, payload: Partner) -> str:
    """Calls a partner that may answer 429 once: records each start (as
    `test:partner_starts`, "job id time"), and holds its key or type when told."""
    await ctx.redis.rpush("test:partner_starts", f"{ctx.job_id} {time.time()!r}")  # type: ignore[misc]
    await _record_start(ctx)
    first = await ctx.redis.set(f"test:limited:{ctx.job_id}", "1", nx=True)
    if payload.retry_after_s and first:
        raise RateLimited(payload.retry_after_s, scope="type" if payload.scope == "type" else "key")
    return "done"


async def parent(ctx: JobContext, payload: Nothing) -> str:
    """Enqueues a child job: workflows are jobs that enqueue jobs."""
    child = await ctx.enqueue("effect", Effect(work_s=0))
    return child.job_id


async def welcome(ctx: JobContext, payload: Signup) -> str:
    """Handles secrets: none of them may show in logs or spans."""
    await _record_start(ctx)
    return f"welcome, {payload.name}"


class Member(BaseModel):
    index: int = Field(ge=0)
    work_s: float = Field(default=0, ge=0)
    fail: bool = False


async def member(ctx: JobContext, payload: Member) -> dict[str, int]:
    """A group's member: its index back, after `work_s`; `fail` fails it for good."""
    await _record_start(ctx)
    await asyncio.sleep(payload.work_s)
    if payload.fail:
        raise PermanentJobError(f"member {payload.index} fails on purpose")
    return {"index": payload.index}


class FanOut(BaseModel):
    children: int = Field(ge=0, le=20_000)
    work_s: float = Field(default=0, ge=0)
    fail_index: int | None = None
    on_child_failure: FailurePolicy = "fail"


async def fan_out(ctx: JobContext, payload: FanOut) -> str:
    """Starts a group of `member`s with `combine` as its continuation."""
    children = [
        Call("member", Member(index=i, work_s=payload.work_s, fail=i == payload.fail_index))
        for i in range(payload.children)
    ]
    group = await ctx.group(
        children, then=Call("combine", Nothing()), on_child_failure=payload.on_child_failure
    )
    return group.id


async def combine(ctx: JobContext, payload: Nothing) -> int:
    """A continuation: records its group's results (once per job id, atomically
    with a count of its runs' effects) and which continuations ran."""
    results = await ctx.group_results()
    shown = [r if not isinstance(r, ChildFailure) else {"failed": r.state} for r in results]
    await ctx.redis.sadd(f"test:continuations:{ctx.group_id}", ctx.job_id)  # type: ignore[misc]
    await ctx.redis.set(f"test:results:{ctx.job_id}", json.dumps(shown))
    await ctx.redis.eval(APPLY_ONCE, 2, f"{{test:combines}}:{ctx.job_id}", "test:combines")  # type: ignore[misc]
    return len(results)


@dataclass(frozen=True, slots=True)
class Ledger:
    """A shared resource that tells which process opened it."""

    pid: int


@asynccontextmanager
async def open_ledger(scope: ResourceScope) -> AsyncIterator[Ledger]:
    """Counts its opening and closing per process in Redis."""
    await scope.redis.incr(f"test:ledger:opened:{os.getpid()}")
    try:
        yield Ledger(os.getpid())
    finally:
        await scope.redis.incr(f"test:ledger:closed:{os.getpid()}")


LEDGER = Resource("test_ledger", open_ledger)
RESOURCES = [LEDGER]


async def ledger_pid(ctx: JobContext, payload: Nothing) -> int:
    """Which process opened the ledger this job uses."""
    return ctx.resource(LEDGER).pid


class Items(BaseModel):
    items: int = Field(ge=0, le=100_000)
    every: int = Field(default=100, ge=1)
    step_s: float = Field(default=0, ge=0)
    # Fail once, at this item (its first time there); None: never.
    fail_at: int | None = None
    # Items as rows with ids, iterated by key (the cursor is the last id done).
    keyed: bool = False
    budget_s: float | None = None


async def _rows(count: int) -> AsyncIterator[dict[str, int]]:
    for n in range(count):
        yield {"id": n}


async def iterating(ctx: JobContext, payload: Items) -> int:
    """Works through numbered items with `ctx.iterate`, recording each one it
    finishes in `test:items:{job id}`; returns how many this try did."""
    await _record_start(ctx)
    done = 0
    numbers: AsyncIterator[int]
    if payload.keyed:
        rows = ctx.iterate(_rows(payload.items), every=payload.every, key=lambda row: row["id"])
        numbers = (row["id"] async for row in rows)
    else:
        numbers = ctx.iterate(range(payload.items), every=payload.every, budget_s=payload.budget_s)
    async for n in numbers:
        if n == payload.fail_at and await ctx.redis.set(f"test:failed:{ctx.job_id}", 1, nx=True):
            raise RuntimeError(f"failing once, at item {n}")
        if payload.step_s:
            await asyncio.sleep(payload.step_s)
        await ctx.redis.rpush(f"test:items:{ctx.job_id}", n)  # type: ignore[misc]
        done += 1
    return done


# Where `journaled` writes its tries (a folder; each worker process a file of
# its own): a record Redis cannot lose, for tests that kill Redis nodes.
JOURNAL_ENV = "CONVEYOR_TEST_JOURNAL"


async def journaled(ctx: JobContext, payload: Effect) -> str:
    """Works `work_s`, then notes "job_id try started_s ended_s" in this
    process's journal file, whatever ended the try. No Redis call of its own."""
    started_s = time.time()
    try:
        await asyncio.sleep(payload.work_s)
    finally:
        path = os.path.join(os.environ[JOURNAL_ENV], f"{os.getpid()}.log")
        with open(path, "a") as journal:  # one short line to local disk
            journal.write(f"{ctx.job_id} {ctx.job_try} {started_s!r} {time.time()!r}\n")
    return "done"


def _quick(max_tries: int) -> RetryPolicy:
    return RetryPolicy(max_tries=max_tries, backoff_base_s=0.2, backoff_cap_s=5)


JOB_TYPES = [
    JobType("flaky", Flaky, f"{MODULE}:flaky", retry=_quick(5)),
    JobType("doomed", Nothing, f"{MODULE}:doomed", retry=_quick(2)),
    JobType("permanent", Doomed, f"{MODULE}:permanent", retry=_quick(5)),
    JobType("deferring", Deferring, f"{MODULE}:deferring", retry=_quick(3)),
    JobType("slow", Slow, f"{MODULE}:slow", timeout_s=60),
    # One try only: a shutdown that cuts it short must not use it up.
    JobType("slow_once", Slow, f"{MODULE}:slow", timeout_s=60, retry=RetryPolicy(max_tries=1)),
    JobType(
        "stuck",
        Slow,
        f"{MODULE}:slow",
        timeout_s=0.3,
        retry=RetryPolicy(max_tries=3, retry_timeouts=False),
    ),
    JobType("effect", Effect, f"{MODULE}:effect", retry=_quick(10)),
    # Kept a second after it finishes: housekeeping's work at a high job rate.
    JobType("brief", Effect, f"{MODULE}:effect", retry=_quick(1), keep_result_s=1),
    JobType("journaled", Effect, f"{MODULE}:journaled", retry=_quick(10)),
    JobType("parent", Nothing, f"{MODULE}:parent"),
    # Groups: a starter, its members and their continuation.
    JobType("fan_out", FanOut, f"{MODULE}:fan_out", retry=_quick(5)),
    JobType("member", Member, f"{MODULE}:member", retry=_quick(5)),
    JobType("combine", Nothing, f"{MODULE}:combine", retry=_quick(5)),
    JobType("welcome", Signup, f"{MODULE}:welcome"),
    JobType("ledger_pid", Nothing, f"{MODULE}:ledger_pid"),
    # send_email with few, quick tries: to see a mail reach the dead letters.
    JobType("quick_mail", SendEmail, "conveyor_seed.jobs.email:send_email", retry=_quick(3)),
    # Flow control: at most 2 running across all workers.
    JobType("capped", Effect, f"{MODULE}:tracked", limits=Limits(max_running=2)),
    # At most one running per tenant.
    JobType(
        "per_tenant",
        Tenanted,
        f"{MODULE}:tracked_tenant",
        limits=Limits(key="tenant_id", max_running_per_key=1),
    ),
    # At most 10 starts in any second.
    JobType("paced", Effect, f"{MODULE}:tracked", limits=Limits(rate=Rate(10, 1.0))),
    # A rate far over what tests start (a window of 200 ms that never binds).
    JobType("brisk", Effect, f"{MODULE}:tracked", limits=Limits(rate=Rate(1000, 0.2))),
    # At most 2 starts per tenant in any second.
    JobType(
        "paced_per_tenant",
        Tenanted,
        f"{MODULE}:tracked_tenant",
        limits=Limits(key="tenant_id", rate_per_key=Rate(2, 1.0)),
    ),
    # For a schedule (given in tests): highest priority, one running at a time.
    JobType("ticking", Tick, f"{MODULE}:tracked", priority=0, limits=Limits(max_running=1)),
    # Snoozes, at most 3 times.
    JobType("snoozing", Snoozing, f"{MODULE}:snoozing", retry=_quick(1), max_snoozes=3),
    # A partner's client: keyed (so a 429 may hold its key, or the whole type).
    JobType(
        "partner", Partner, f"{MODULE}:partner", retry=_quick(1), limits=Limits(key="tenant_id")
    ),
    # The same, with no limits: a 429 snoozes the job and holds nothing.
    JobType("partner_unlimited", Partner, f"{MODULE}:partner", retry=_quick(1)),
    # Keyed, no limit: tenants take turns.
    JobType("fair", Tenanted, f"{MODULE}:tracked_tenant", limits=Limits(key="tenant_id")),
    # Long loops that checkpoint (ctx.iterate): every try resumes where the last stopped.
    JobType("iterating", Items, f"{MODULE}:iterating", timeout_s=120, retry=_quick(3)),
    # The same with a one-second timeout: each try that times out is retried from its checkpoint.
    JobType("iterating_brief", Items, f"{MODULE}:iterating", timeout_s=1, retry=_quick(10)),
    # Claim-check: a payload or result over 1 KiB is kept in the blob store.
    JobType(
        "bulky",
        Bulky,
        f"{MODULE}:bulky",
        retry=_quick(3),
        offload_above_bytes=BULKY_OFFLOAD_BYTES,
    ),
]


async def result_of(store: JobStore, job_id: str, timeout_s: float = 15.0) -> Any:
    """The result of a job once it is complete (its record keeps it)."""
    async with asyncio.timeout(timeout_s):
        while True:
            job = await store.get(job_id)
            if job is not None and job.state is JobState.COMPLETE:
                return job.result
            if job is not None and job.state is JobState.DEAD:
                raise AssertionError(f"job {job_id} is dead: {job.error}")
            await asyncio.sleep(0.05)
