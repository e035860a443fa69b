"""`/v1/queues`: statistics, pause and resume, history."""

import httpx
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families

from conveyor_core.history import FINAL_AFTER_MS, MAX_MINUTES, MINUTE_MS
from conveyor_seed import CREATE_TASK


async def test_pause_and_resume_show_in_the_queue_list(client: httpx.AsyncClient) -> None:
    queue = CREATE_TASK.queue
    paused = await client.post(f"/v1/queues/{queue}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True
    assert paused.json()["paused_at"] is not None

    submitted = await client.post("/v1/jobs/create_task", json={"sleep_s": 0})
    assert submitted.status_code == 201  # enqueueing still works
    job = (await client.get(f"/v1/jobs/{submitted.json()['id']}")).json()
    assert (job["state"], job["waiting_reason"]) == ("queued", "paused")

    (listed,) = (await client.get("/v1/queues")).json()["queues"]
    assert (listed["name"], listed["paused"], listed["ready"]) == (queue, True, 1)

    resumed = await client.post(f"/v1/queues/{queue}/resume")
    assert resumed.status_code == 200
    assert (resumed.json()["paused"], resumed.json()["paused_at"]) == (False, None)
    job = (await client.get(f"/v1/jobs/{submitted.json()['id']}")).json()
    assert job["waiting_reason"] is None


async def test_pausing_an_unknown_queue_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queues/nowhere/pause")
    assert response.status_code == 404
    assert "nowhere" in response.json()["detail"]


async def scraped(client: httpx.AsyncClient, name: str, queue: str) -> float:
    text = (await client.get("/metrics")).text
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == {"queue": queue}
    ]
    return value


async def test_the_api_exports_a_pause_even_with_no_worker_running(
    client: httpx.AsyncClient,
) -> None:
    """Workers export the pause from their claims; a queue scaled to zero workers
    has none, so the api exports it too, read at each scrape."""
    queue = CREATE_TASK.queue
    assert (await client.post(f"/v1/queues/{queue}/pause")).status_code == 200
    assert await scraped(client, "conveyor_queue_paused", queue) == 1
    assert await scraped(client, "conveyor_queue_paused_seconds", queue) >= 0
    assert (await client.post(f"/v1/queues/{queue}/resume")).status_code == 200
    assert await scraped(client, "conveyor_queue_paused", queue) == 0
    assert await scraped(client, "conveyor_queue_paused_seconds", queue) == 0


async def minute_reads(redis: ArqRedis) -> int:
    """HGETALLs Redis has run: a history read is one per minute it asks Redis for."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_queues_history_is_bounded_in_span_and_in_cost(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    """The longest span costs Redis its minutes once; asked again (a polled
    chart, or a client asking on purpose), only the minutes that may still change."""
    path = f"/v1/queues/{CREATE_TASK.queue}/history"
    before = await minute_reads(redis)
    first = await client.get(path, params={"minutes": MAX_MINUTES})
    assert first.status_code == 200, first.text
    assert len(first.json()["minutes"]) == MAX_MINUTES
    assert 0 < await minute_reads(redis) - before <= MAX_MINUTES

    before = await minute_reads(redis)
    for _ in range(3):
        assert (await client.get(path, params={"minutes": MAX_MINUTES})).status_code == 200
    may_change = FINAL_AFTER_MS // MINUTE_MS + 2  # and a minute's tick
    assert await minute_reads(redis) - before <= 3 * may_change

    longer = await client.get(path, params={"minutes": MAX_MINUTES + 1})
    assert longer.status_code == 422, longer.text
    assert (await client.get("/v1/queues/no-such-queue/history")).status_code == 404
