"""What a job function gets besides its payload."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
from arq.connections import ArqRedis
from pydantic import BaseModel

from conveyor_core.catalog import Catalog, JobType
from conveyor_core.enqueue import enqueue
from conveyor_core.store import JobStore, Submitted

if TYPE_CHECKING:
    from conveyor_worker.workflow import Workflow

PayloadT_contra = TypeVar("PayloadT_contra", bound=BaseModel, contravariant=True)


@dataclass(slots=True)
class JobContext:
    """One try of one job: who it is, and the resources jobs share."""

    job_id: str
    job_try: int
    job_type: JobType
    store: JobStore
    catalog: Catalog
    http: aiohttp.ClientSession
    meta: dict[str, str] = field(default_factory=dict)
    # Mail, documents and the summarizer, for the workflow jobs.
    workflow: "Workflow | None" = None

    @property
    def redis(self) -> ArqRedis:
        return self.store.redis

    @property
    def flow(self) -> "Workflow":
        if self.workflow is None:
            raise RuntimeError("this worker did not open the workflow resources")
        return self.workflow

    async def progress(self, percent: int, message: str = "") -> None:
        """Report progress (0-100) to clients watching this job."""
        await self.store.report_progress(self.job_id, max(0, min(100, int(percent))), message)

    async def enqueue(
        self, job_type: str | JobType, payload: BaseModel | dict[str, Any], **options: Any
    ) -> Submitted:
        """Enqueue a follow-up job; it carries this job's request id."""
        if isinstance(job_type, str):
            job_type = self.catalog[job_type]
        options.setdefault("request_id", self.meta.get("request_id"))
        return await enqueue(self.store, job_type, payload, **options)


class JobHandler(Protocol[PayloadT_contra]):
    """The shape of a job function: business logic only, the wrapper does the rest."""

    def __call__(self, ctx: JobContext, payload: PayloadT_contra, /) -> Awaitable[Any]: ...


AnyHandler = Callable[[JobContext, Any], Awaitable[Any]]
