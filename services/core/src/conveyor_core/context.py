"""What a job handler gets besides its payload: `JobContext`.

It lives in core, beside the job types, so a job module imports nothing from
the worker: the api (which loads job modules to validate payloads, and has no
worker code) imports it too.
"""

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

from arq.connections import ArqRedis
from pydantic import BaseModel

from conveyor_core.catalog import Catalog, JobType
from conveyor_core.checkpoint import Checkpoint, iterate, new_checkpoint
from conveyor_core.enqueue import enqueue
from conveyor_core.fencing import Fence
from conveyor_core.group_ids import continued_by, derived_group_id, group_of
from conveyor_core.groups import (
    GROUP_META,
    GROUP_POLICY_META,
    GROUP_TOTAL_META,
    Child,
    FailurePolicy,
    Group,
    GroupError,
    NotAContinuationError,
    iter_group_results,
    start_group,
)
from conveyor_core.keys import group_key
from conveyor_core.resources import Resource, ResourceNotOpenError
from conveyor_core.snooze import HoldScope, RateLimited, Snooze
from conveyor_core.store import SUBMITTED_BY, JobStore, Reported, Submitted

T = TypeVar("T")
PayloadT_contra = TypeVar("PayloadT_contra", bound=BaseModel, contravariant=True)


def _not_stopping() -> bool:
    return False


@dataclass(slots=True)
class JobContext:
    """One try of one job: who it is, and the resources the worker opened."""

    job_id: str
    job_try: int
    job_type: JobType
    store: JobStore
    catalog: Catalog
    meta: dict[str, str] = field(default_factory=dict)
    # Every resource the worker's job modules declare, by name, open.
    resources: Mapping[str, Any] = field(default_factory=dict)
    # The try's token (fencing.py): a stale try's reports are refused.
    fence: Fence | None = None
    # Set by the worker: whether it is shutting down (see `stopping`).
    stop_requested: Callable[[], bool] = _not_stopping
    # The job's last checkpoint, once read or saved by this try.
    _checkpoint: Checkpoint | None = field(default=None, init=False, repr=False)
    _checkpoint_read: bool = field(default=False, init=False, repr=False)
    # How many groups this try started (a group's id derives from it).
    groups_started: int = field(default=0, init=False)

    @property
    def redis(self) -> ArqRedis:
        return self.store.redis

    def resource(self, resource: Resource[T]) -> T:
        """The open resource, e.g. `ctx.resource(MAILER)`."""
        try:
            value: T = self.resources[resource.name]
        except KeyError:
            raise ResourceNotOpenError(
                f"resource {resource.name!r} is not open in this worker: "
                "is its job module in CONVEYOR_JOB_MODULES?"
            ) from None
        return value

    async def progress(self, percent: int, message: str = "") -> None:
        """Report progress (0-100) to clients watching this job."""
        percent = max(0, min(100, int(percent)))
        token = self.fence.token if self.fence else ""
        reported = await self.store.report_progress(self.job_id, percent, message, token=token)
        if reported is Reported.STALE and self.fence is not None:
            self.fence.refused("progress")

    @property
    def stopping(self) -> bool:
        """The worker is shutting down: a long loop may save its checkpoint and
        raise `Interrupted` to hand the job back now (`iterate` does)."""
        return self.stop_requested()

    async def checkpoint(
        self, cursor: Any, *, done: int | None = None, total: int | None = None
    ) -> bool:
        """Save where the job got to (a JSON cursor, at most 4 KiB: a position, not
        the data); the job's next try resumes from it (`last_checkpoint`). With
        `done` and `total`, the job's progress is derived from them. False when
        refused: this try is stale (another worker owns the job now)."""
        saved = new_checkpoint(cursor, done=done, total=total, job_try=self.job_try)
        token = self.fence.token if self.fence else ""
        reported = await self.store.save_checkpoint(self.job_id, saved, token=token)
        if reported is Reported.STALE and self.fence is not None:
            self.fence.refused("checkpoint")
        if reported is not Reported.RECORDED:
            return False
        self._checkpoint, self._checkpoint_read = saved, True
        return True

    async def last_checkpoint(self) -> Checkpoint | None:
        """The job's last checkpoint (this try's, or an earlier try's), or None:
        read once per try, and only when asked."""
        if not self._checkpoint_read:
            self._checkpoint = await self.store.last_checkpoint(self.job_id)
            self._checkpoint_read = True
        return self._checkpoint

    def iterate(
        self,
        items: Iterable[T] | AsyncIterable[T],
        *,
        every: int = 100,
        key: Callable[[T], Any] | None = None,
        budget_s: float | None = None,
    ) -> AsyncIterator[T]:
        """`async for item in ctx.iterate(items, every=100)`: a long loop that
        resumes where the last try stopped. It skips the items the job's last
        checkpoint says are done, saves one every `every` items (and after the
        last), with progress when `items` has a length, and at a shutdown (or
        once the try has run `budget_s`) saves one after the current item and
        hands the job back (`Interrupted`: queued again, the try not counted).

        Without `key`, the cursor is the count of items done, and `items` must
        come in the same order on every try. With `key` (say, a row's id), it
        is the key of the last item done, `items` come in ascending key order,
        and a resumed try skips those up to it: query from
        `(await ctx.last_checkpoint()).cursor` to skip them in the source."""
        return iterate(self, items, every=every, key=key, budget_s=budget_s)

    def snooze(self, delay_s: float, reason: str = "") -> NoReturn:
        """Run again in `delay_s` seconds, this try not counted (raises `Snooze`)."""
        raise Snooze(delay_s, reason)

    def rate_limited(
        self, retry_after_s: float, scope: HoldScope = "type", reason: str = ""
    ) -> NoReturn:
        """A partner's 429: run again after `retry_after_s`, this try not counted,
        and hold the job type's (or key's) jobs as long (raises `RateLimited`)."""
        raise RateLimited(retry_after_s, scope, reason)

    async def enqueue(
        self, job_type: str | JobType, payload: BaseModel | dict[str, Any], **options: Any
    ) -> Submitted:
        """Enqueue a follow-up job; it carries this job's request id and api key
        (whose job it is too), and this job's id as its parent."""
        if isinstance(job_type, str):
            job_type = self.catalog[job_type]
        options.setdefault("request_id", self.meta.get("request_id"))
        options.setdefault("submitted_by", self.meta.get(SUBMITTED_BY))
        options.setdefault("parent_id", self.job_id)
        return await enqueue(self.store, job_type, payload, **options)

    async def group(
        self,
        children: Sequence[Child],
        *,
        then: Child | None = None,
        on_child_failure: FailurePolicy = "fail",
        hand_over: bool = False,
    ) -> Group:
        """Start a group (groups.py): `children` run in parallel (each a `Call`
        or a (job type, payload) pair), and `then`, once every one has ended,
        reads their results in order with `group_results()`. A child's failure
        (dead or cancelled) fails the group ("fail": `then` does not run), is
        listed in the results ("run"), or is left out ("ignore").

        The same try's n-th group has the same id on every try: a try run
        again resumes it (existing children are not submitted twice).

        `hand_over`: this job is a child of a group (or a continuation that
        took a child's place over), and its place there waits for the new
        group too: it ends when `then` ends (or when the new group fails or
        is cancelled), and `then`'s result takes its place in the outer
        group's results. Nested workflows and chains nest their waits so."""
        hands_to = await self._place() if hand_over else None
        if hand_over and hands_to is None:
            raise GroupError(
                "hand_over",
                f"job {self.job_id} holds no place in a group: it is neither a child "
                "nor a continuation that took a child's place over",
            )
        group_id = derived_group_id(self.job_id, self.groups_started)
        self.groups_started += 1
        return await start_group(
            self.store,
            children,
            then=then,
            on_child_failure=on_child_failure,
            group_id=group_id,
            parent_id=self.job_id,
            submitted_by=self.meta.get(SUBMITTED_BY),
            request_id=self.meta.get("request_id"),
            hands_to=hands_to,
        )

    async def _place(self) -> str | None:
        """The place (a child's id) this job holds in a group: its own id for
        a child; for a continuation, the place its group took over, if any."""
        if group_of(self.job_id) is not None:
            return self.job_id
        if self.group_id is None or continued_by(self.job_id) is None:
            return None
        place = await self.redis.hget(group_key(self.group_id), "hands_to")  # type: ignore[misc]
        return place.decode() if place else None

    @property
    def group_id(self) -> str | None:
        """The group whose continuation this job is; None for any other job."""
        return self.meta.get(GROUP_META)

    def iter_group_results(self) -> AsyncIterator[Any]:
        """The results of this continuation's group's children, in order, read
        a bounded chunk at a time (see `group_results`)."""
        group_id = self.group_id
        if group_id is None:
            raise NotAContinuationError(
                f"job {self.job_id} is not a group's continuation: it has no group results"
            )
        total = int(self.meta.get(GROUP_TOTAL_META) or 0)
        policy = self.meta.get(GROUP_POLICY_META) or "fail"
        return iter_group_results(self.store, group_id, total, policy)

    async def group_results(self) -> list[Any]:
        """The results of this continuation's group's children, in order: each
        child's return value; a failed child as a `ChildFailure` (policy "run"),
        or left out (policy "ignore")."""
        return [result async for result in self.iter_group_results()]


class JobHandler(Protocol[PayloadT_contra]):
    """The shape of a job function: business logic only, the worker does the rest."""

    def __call__(self, ctx: JobContext, payload: PayloadT_contra, /) -> Awaitable[Any]: ...


AnyHandler = Callable[[JobContext, Any], Awaitable[Any]]
