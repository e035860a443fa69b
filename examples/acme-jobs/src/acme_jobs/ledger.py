"""Acme's ledger: stands in for a database pool. Invoices are booked in Redis here,
so the example runs anywhere Conveyor does; a real one would open a pool
(asyncpg, SQLAlchemy) in `open_ledger` and close it in its `finally`."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from arq.connections import ArqRedis

from conveyor_core import ResourceScope

# Hash of booked invoices: order id -> amount in cents.
INVOICES_KEY = "acme:invoices"
# List of the ledger's openings and closings ("opened <pid>", "closed <pid>").
LIFECYCLE_KEY = "acme:ledger:lifecycle"
# List of the reconciliation runs, by job id (the job name and its scheduled time).
RUNS_KEY = "acme:reconcile:runs"
# Orders waiting for an invoice: order id -> amount in cents.
OPEN_ORDERS_KEY = "acme:orders:open"


@dataclass(frozen=True, slots=True)
class Ledger:
    redis: ArqRedis
    pid: int

    async def book(self, order_id: str, amount_cents: int) -> bool:
        """Book the invoice once: False when it was booked before."""
        booked: int = await self.redis.hsetnx(  # type: ignore[misc]
            INVOICES_KEY, order_id, str(amount_cents)
        )
        return bool(booked)


@asynccontextmanager
async def open_ledger(scope: ResourceScope) -> AsyncIterator[Ledger]:
    pid = os.getpid()
    await scope.redis.rpush(LIFECYCLE_KEY, f"opened {pid}")  # type: ignore[misc]
    try:
        yield Ledger(scope.redis, pid)
    finally:
        await scope.redis.rpush(LIFECYCLE_KEY, f"closed {pid}")  # type: ignore[misc]
