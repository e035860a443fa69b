"""`/v1/dev/mail`: only in development mode, listing what the mail catcher kept."""

import json

import httpx
import redis.asyncio as aioredis

from conveyor_core.keys import CAUGHT_MAIL_KEY
from tests.api.conftest import make_app, serve


async def test_production_has_no_mail_route(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/dev/mail")).status_code == 404
    assert "/v1/dev/mail" not in (await client.get("/openapi.json")).json()["paths"]
    assert (await client.get("/ui/config.json")).json()["caught_mail"] is False


async def test_development_lists_caught_mail_newest_first(redis_url: str) -> None:
    async with aioredis.Redis.from_url(redis_url) as redis:
        await redis.delete(CAUGHT_MAIL_KEY)
        for subject in ("first", "second"):
            mail = {
                "received_at": 1_800_000_000.5,
                "from": "conveyor@localhost",
                "to": ["ada@example.com"],
                "subject": subject,
                "message_id": f"<{subject}@localhost>",
                "body": f"the {subject} body",
            }
            await redis.lpush(CAUGHT_MAIL_KEY, json.dumps(mail))
        async with serve(make_app(redis_url, development=True)) as client:
            assert (await client.get("/ui/config.json")).json()["caught_mail"] is True
            response = await client.get("/v1/dev/mail")
            assert response.status_code == 200
            items = response.json()["items"]
            assert [m["subject"] for m in items] == ["second", "first"]
            assert items[0]["to"] == ["ada@example.com"]
            assert items[0]["received_at"] == "2027-01-15T08:00:00.500000Z"
            assert (
                await client.get("/v1/dev/mail", headers={"authorization": ""})
            ).status_code == 401
        await redis.delete(CAUGHT_MAIL_KEY)
