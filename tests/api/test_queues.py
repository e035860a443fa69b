"""`/v1/queues`: statistics, pause and resume."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

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
