"""Acme's handlers: business logic only. Conveyor's worker imports this module;
the api never does."""

from typing import Any

from acme_jobs import INVOICE, LEDGER, Invoice
from acme_jobs.ledger import OPEN_ORDERS_KEY, RUNS_KEY
from conveyor_core import JobContext, ScheduledRun


async def reconcile(ctx: JobContext, payload: ScheduledRun) -> dict[str, Any]:
    """Enqueue an invoice job per open order. The idempotency key makes a retry
    of this run find the jobs its first try enqueued."""
    await ctx.redis.rpush(RUNS_KEY, ctx.job_id)  # type: ignore[misc]
    orders: dict[bytes, bytes] = await ctx.redis.hgetall(OPEN_ORDERS_KEY)  # type: ignore[misc]
    job_ids = []
    for order_id, amount in sorted(orders.items()):
        submitted = await ctx.enqueue(
            INVOICE,
            Invoice(order_id=order_id.decode(), amount_cents=int(amount)),
            idempotency_key=order_id.decode(),
        )
        job_ids.append(submitted.job_id)
    return {"invoice_jobs": job_ids}


async def invoice(ctx: JobContext, payload: Invoice) -> dict[str, Any]:
    """Book the invoice in the ledger (opened once per worker process)."""
    ledger = ctx.resource(LEDGER)
    booked = await ledger.book(payload.order_id, payload.amount_cents)
    await ctx.redis.hdel(OPEN_ORDERS_KEY, payload.order_id)  # type: ignore[misc]
    return {"booked": booked, "ledger_pid": ledger.pid}
