"""Acme's job module: what `CONVEYOR_JOB_MODULES=acme_jobs` loads in both services.

- `acme_reconcile` runs by itself, hourly at :00 UTC (CONVEYOR_SCHEDULES can
  move it or switch it off), and enqueues one `acme_invoice` per open order.
- `acme_invoice` books an invoice in the ledger, a resource each worker
  process opens once and closes at shutdown.

This module imports only `conveyor_core`'s public surface and pydantic; the
handlers live in `acme_jobs.handlers`, which only the worker imports.
"""

from pydantic import BaseModel, Field

from acme_jobs.ledger import Ledger, open_ledger
from conveyor_core import JobType, Resource, RetryPolicy, Schedule, ScheduledRun


class Invoice(BaseModel):
    """Payload of `acme_invoice`: what the api validates before enqueueing."""

    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    amount_cents: int = Field(gt=0, le=10_000_000)


# Opened once per worker process, before its first job; closed at shutdown.
LEDGER: Resource[Ledger] = Resource("acme_ledger", open_ledger, "Acme's invoice ledger")

RECONCILE = JobType(
    name="acme_reconcile",
    payload=ScheduledRun,
    handler="acme_jobs.handlers:reconcile",
    retry=RetryPolicy(max_tries=3, backoff_base_s=5),
    timeout_s=120,
    description="Enqueue an invoice for every order that has none. Hourly.",
    schedules=(Schedule(minute=0),),
    # Its schedule runs it; clients get no submit route for it.
    public=False,
)

INVOICE = JobType(
    name="acme_invoice",
    payload=Invoice,
    handler="acme_jobs.handlers:invoice",
    retry=RetryPolicy(max_tries=5, backoff_base_s=1, backoff_cap_s=60),
    timeout_s=30,
    description="Book one order's invoice in the ledger; once, however often it is tried.",
)

JOB_TYPES = [RECONCILE, INVOICE]
RESOURCES = [LEDGER]
