"""The job catalog: every job type declared once, for both services.

Job types come from the job modules named in `CONVEYOR_JOB_MODULES`; the
platform declares none of its own. A job module exposes:

- `JOB_TYPES: list[JobType]` (required): name, payload model, queue, retry
  policy, timeout, retention and schedules of each job type;
- `QUEUES: list[Queue]` (optional): settings of a queue as a whole (its
  `shards`); a queue named by job types only has one shard;
- `RESOURCES: list[Resource]` (optional): what its handlers share, opened once
  per worker process (see resources.py);
- `API_ROUTERS: list[str]` (optional): `"package.module:router"` of FastAPI
  routers the api mounts, for endpoints of the module's own.

The api validates payloads against the catalog and never imports a handler;
the worker registers exactly the catalog's handlers for its queue. A job
module imports only core's public surface (`from conveyor_core import ...`),
so both services load it.
"""

import importlib
import random
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pydantic import BaseModel, Field

from conveyor_core import keys
from conveyor_core.flow import Limits, fairness_key
from conveyor_core.jobs import DEFAULT_PRIORITY, HIGHEST_PRIORITY, LOWEST_PRIORITY
from conveyor_core.resources import Resource
from conveyor_core.schedule import Schedule
from conveyor_core.settings import CatalogSettings
from conveyor_core.snooze import DEFAULT_MAX_SNOOZES

# arq's own default queue, so a bare arq client or worker interoperates.
DEFAULT_QUEUE = "arq:queue"
# What a job type may be called: it is an arq function name and a metric label.
JOB_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


class PermanentJobError(Exception):
    """Raise from a job to fail it at once: no retry, straight to the dead letters."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing job is retried: exponential backoff with jitter, up to `max_tries`."""

    max_tries: int = 5
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    # Errors that no retry can fix; PermanentJobError and invalid payloads always are.
    permanent_errors: tuple[type[BaseException], ...] = ()
    # A try that hits the job's timeout is retried unless this is False.
    retry_timeouts: bool = True

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError(f"invalid retry policy: {self}")

    def backoff_s(self, job_try: int, rng: random.Random | None = None) -> float:
        """Delay before try `job_try + 1`: "equal jitter", so delays grow yet spread out.

        The ceiling doubles per try (base, 2·base, 4·base … up to the cap); half
        of it is fixed and half random, which keeps retries of many jobs that
        failed together from arriving together.
        """
        ceiling_s = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** (job_try - 1))
        jitter_s: float = (rng or random).uniform(0, ceiling_s / 2)
        return ceiling_s / 2 + jitter_s

    def is_permanent(self, error: BaseException) -> bool:
        return isinstance(error, (PermanentJobError, *self.permanent_errors))


@dataclass(frozen=True, slots=True)
class JobType:
    """One job type: what it accepts, where it runs, how it fails and when it runs by itself."""

    name: str
    payload: type[BaseModel]
    # "package.module:function", imported by the worker only.
    handler: str
    queue: str = DEFAULT_QUEUE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 300.0
    # How long a finished job (and its result) stays readable.
    keep_result_s: float = 86_400.0
    description: str = ""
    # Runs the worker enqueues by itself (each once, whatever the replicas);
    # CONVEYOR_SCHEDULES overrides or switches them off by job name.
    schedules: tuple[Schedule, ...] = ()
    # 0 (highest) to 9 (lowest); a submit may give another.
    priority: int = DEFAULT_PRIORITY
    # Concurrency and rate limits, per type and per key, across all workers.
    limits: Limits | None = None
    # Whether clients may submit it over HTTP (`POST /v1/jobs/{name}`). False
    # for an internal step that only jobs, schedules and the module's own
    # routes enqueue (a mail, a cleanup): it gets no submit route, yet jobs
    # still enqueue it and workers run it. True by default, so a module's types
    # stay its api; each api key may be limited further (its `job_types`).
    public: bool = True
    # How often a job may snooze (Snooze, RateLimited) since its last requeue;
    # the next snooze makes it dead, so nothing snoozes for ever.
    max_snoozes: int = DEFAULT_MAX_SNOOZES
    # Claim-check (claimcheck.py): a payload or result whose JSON is larger than
    # this many bytes is kept in the blob store, the job keeps a reference.
    # None: always inline (at most the api's max_payload_bytes).
    offload_above_bytes: int | None = None

    def __post_init__(self) -> None:
        if not JOB_NAME.fullmatch(self.name):
            raise ValueError(f"job type name {self.name!r}: use letters, digits, _ . and -")
        if isinstance(self.schedules, Schedule):
            object.__setattr__(self, "schedules", (self.schedules,))
        object.__setattr__(self, "schedules", tuple(self.schedules))
        if not all(isinstance(s, Schedule) for s in self.schedules):
            raise ValueError(f"job type {self.name!r}: schedules must be Schedule objects")
        if ":" not in self.handler:
            raise ValueError(
                f"job type {self.name!r}: handler {self.handler!r} is not 'package.module:function'"
            )
        priority_ok = isinstance(self.priority, int) and not isinstance(self.priority, bool)
        if not priority_ok or not HIGHEST_PRIORITY <= self.priority <= LOWEST_PRIORITY:
            raise ValueError(
                f"job type {self.name!r}: priority must be {HIGHEST_PRIORITY} (highest) to "
                f"{LOWEST_PRIORITY} (lowest), not {self.priority!r}"
            )
        snoozes_ok = isinstance(self.max_snoozes, int) and not isinstance(self.max_snoozes, bool)
        if not snoozes_ok or self.max_snoozes < 0:
            raise ValueError(
                f"job type {self.name!r}: max_snoozes must be an integer >= 0, "
                f"not {self.max_snoozes!r}"
            )
        if not re.fullmatch(QUEUE_PATTERN, self.queue):
            raise ValueError(
                f"job type {self.name!r}: queue {self.queue!r} must be letters, digits and _.:-"
            )
        if self.offload_above_bytes is not None and self.offload_above_bytes < 0:
            raise ValueError(f"job type {self.name!r}: offload_above_bytes must be 0 or more")
        if self.limits is not None and (problems := self.limits.problems(self.payload)):
            raise ValueError(f"job type {self.name!r}: " + "; ".join(problems))


# Enough for a queue over every primary of any cluster Conveyor is sized for
# (docs/how-to/capacity.md); each shard costs an idle worker a claim per poll.
MAX_SHARDS = 64


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue as a whole. `shards`: how many hash tags (so, on a cluster, how
    many slots and nodes) its jobs spread over; 1 keeps every key of the queue
    in one slot, as a queue that is not declared. See keys.py, "Shards"."""

    name: str
    shards: int = 1

    def __post_init__(self) -> None:
        if not re.fullmatch(QUEUE_PATTERN, self.name):
            raise ValueError(f"queue {self.name!r} must be letters, digits and _.:-")
        shards_ok = isinstance(self.shards, int) and not isinstance(self.shards, bool)
        if not shards_ok or not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(
                f"queue {self.name!r}: shards must be an integer from 1 to {MAX_SHARDS}, "
                f"not {self.shards!r}"
            )


# Ids of records (documents, jobs) as jobs pass them and the api's paths name them.
ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
ID_MAX_CHARS = 128
RecordId = Field(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)
# A queue's name: it is the hash tag of the queue's keys and of its jobs' ids
# (keys.py), so it holds no brace.
QUEUE_PATTERN = r"^[A-Za-z0-9_.:-]+$"
# A job's id: its queue shard's tag, `{queue}` or `{queue~n}`, then an id as
# above (keys.job_id_for); or, for a job a bare arq client enqueued, no tag. A
# group's continuation of another shard than its group's carries both tags
# (`{shard}{group's shard}g....then`, group_ids.py).
JOB_ID_PATTERN = r"^(\{[A-Za-z0-9_.:-]+(~[0-9]{1,2})?\}){0,2}[A-Za-z0-9_.:-]+$"


class ScheduledRun(BaseModel):
    """The payload of a scheduled job type: none; what a run does depends on when it runs."""


class UnknownJobTypeError(KeyError):
    pass


class JobModuleError(ValueError):
    """A job module the services cannot load; the message names the module and the problem."""

    def __init__(self, module: str, problem: str) -> None:
        super().__init__(f"job module {module!r}: {one_line(problem)}")
        self.module = module


def one_line(text: str) -> str:
    """A multi-line message (a pydantic ValidationError's) as one line for a log."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


class Catalog:
    """Job types by name, the resources their handlers share, and the api routers
    their modules add."""

    def __init__(
        self,
        job_types: Iterable[JobType],
        resources: Iterable["Resource[Any]"] = (),
        api_routers: Iterable[str] = (),
        queues: Iterable[Queue] = (),
    ) -> None:
        self._queues: dict[str, Queue] = {}
        for queue in queues:
            if queue.name in self._queues:
                raise ValueError(f"queue {queue.name!r} is declared twice")
            self._queues[queue.name] = queue
        self._types: dict[str, JobType] = {}
        for job_type in job_types:
            if job_type.name in self._types:
                raise ValueError(f"job type {job_type.name!r} is declared twice")
            self._types[job_type.name] = job_type
        self.resources: list[Resource[Any]] = []
        for resource in resources:
            if any(r.name == resource.name for r in self.resources):
                raise ValueError(f"resource {resource.name!r} is declared twice")
            self.resources.append(resource)
        # "package.module:router" of a FastAPI APIRouter, imported by the api only.
        self.api_routers = list(api_routers)
        # Which job module declared each resource, for messages.
        self.resource_modules: dict[str, str] = {}

    def __getitem__(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobTypeError(name) from None

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def public(self) -> list[JobType]:
        """The job types clients may submit over HTTP."""
        return [job_type for job_type in self if job_type.public]

    def queues(self) -> list[str]:
        return sorted({job_type.queue for job_type in self})

    def for_queue(self, queue: str) -> list[JobType]:
        return [job_type for job_type in self if job_type.queue == queue]

    def shard_count(self, queue: str) -> int:
        declared = self._queues.get(queue)
        return declared.shards if declared else 1

    def shards(self, queue: str) -> list[str]:
        """The names of a queue's shards (keys.shard_name), shard 0 first."""
        return keys.shard_names(queue, self.shard_count(queue))

    def all_shards(self) -> list[str]:
        """Every shard of every queue of the catalog."""
        return [shard for queue in self.queues() for shard in self.shards(queue)]

    def shard_for(
        self,
        job_type: JobType,
        payload: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        debounce_key: str | None = None,
        submitted_by: str | None = None,
    ) -> str:
        """The shard a new job goes to. One shard: the queue. Several: by the
        job's fairness key (its limits' `key`: a key's jobs stay together, so
        per-key limits and turns hold exactly), else by its Idempotency-Key or
        debounce key (a repeat finds the first one's record), else at random."""
        count = self.shard_count(job_type.queue)
        if count == 1:
            return job_type.queue
        scope = f"{submitted_by or ''}/{job_type.name}:"
        if (key := fairness_key(job_type.limits, payload)) is not None:
            route = f"key:{key}"
        elif idempotency_key:
            route = f"idempotency:{scope}{idempotency_key}"
        elif debounce_key:
            route = f"debounce:{scope}{debounce_key}"
        else:
            # Spreading load, not a secret.
            return keys.shard_name(job_type.queue, random.randrange(count))  # noqa: S311
        return keys.shard_name(job_type.queue, zlib.crc32(route.encode()) % count)


def _module_list(module_name: str, module: ModuleType, attribute: str, kind: type) -> list[Any]:
    declared = getattr(module, attribute, [])
    if not isinstance(declared, list | tuple) or not all(isinstance(d, kind) for d in declared):
        raise JobModuleError(module_name, f"{attribute} must be a list of {kind.__name__}")
    return list(declared)


def load_catalog(modules: Iterable[str] | None = None) -> Catalog:
    """Each job module's `JOB_TYPES` (and its `RESOURCES` and `API_ROUTERS`, if any);
    without `modules`, those `CONVEYOR_JOB_MODULES` names.

    A module that cannot be loaded raises JobModuleError, whose one-line
    message names the module and the problem; the services refuse to start with it.
    """
    if modules is None:
        modules = CatalogSettings().modules
    job_types: dict[str, tuple[str, JobType]] = {}
    resources: dict[str, tuple[str, Resource[Any]]] = {}
    api_routers: list[str] = []
    queues: dict[str, tuple[str, Queue]] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise JobModuleError(
                module_name, f"import failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not hasattr(module, "JOB_TYPES"):
            raise JobModuleError(module_name, "has no JOB_TYPES list")
        for job_type in _module_list(module_name, module, "JOB_TYPES", JobType):
            if job_type.name in job_types:
                other = job_types[job_type.name][0]
                raise JobModuleError(
                    module_name, f"job type {job_type.name!r} is declared twice (also in {other!r})"
                )
            job_types[job_type.name] = (module_name, job_type)
        for resource in _module_list(module_name, module, "RESOURCES", Resource):
            if resource.name in resources:
                other = resources[resource.name][0]
                raise JobModuleError(
                    module_name, f"resource {resource.name!r} is declared twice (also in {other!r})"
                )
            resources[resource.name] = (module_name, resource)
        for queue in _module_list(module_name, module, "QUEUES", Queue):
            if queue.name in queues:
                other = queues[queue.name][0]
                raise JobModuleError(
                    module_name, f"queue {queue.name!r} is declared twice (also in {other!r})"
                )
            queues[queue.name] = (module_name, queue)
        for router in _module_list(module_name, module, "API_ROUTERS", str):
            if ":" not in router:
                raise JobModuleError(
                    module_name, f"API_ROUTERS entry {router!r} is not 'module:name'"
                )
            api_routers.append(router)
    catalog = Catalog(
        (job_type for _, job_type in job_types.values()),
        (resource for _, resource in resources.values()),
        api_routers,
        (queue for _, queue in queues.values()),
    )
    catalog.resource_modules = {name: module for name, (module, _) in resources.items()}
    return catalog
