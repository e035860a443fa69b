"""Per-key request rate limits in Redis, so that every api replica shares them."""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, OutOfMemoryError

from conveyor_core.keys import rate_limit_key
from conveyor_core.store import RateLimit, lua_script

logger = logging.getLogger(__name__)

US_PER_S = 1_000_000


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    # When the next request would be allowed; 0 when this one was.
    retry_after_s: float
    # Requests that may follow at once without waiting.
    remaining: int

    @property
    def retry_after_header(self) -> str:
        """Retry-After takes whole seconds: round up, so a client that obeys it gets in."""
        return str(max(1, math.ceil(self.retry_after_s)))


# What a full Redis (OutOfMemoryError: it refuses the limiter's write) decides:
# let the request through. The limiter protects Redis from load, not data from
# readers; a full Redis must not turn every read into a failure.
ALLOWED_WHILE_FULL = RateDecision(allowed=True, retry_after_s=0.0, remaining=0)


class RateLimiter:
    """GCRA: `rate_per_s` requests a second on average, up to `burst` at once.

    One Lua call per request (a GET and a SET on one small key); the key
    expires as soon as the client is back to a full burst. `hit_then` sends
    the call with a route's reads in one round trip.

    Fails open: while Redis is out of memory the limiter's write is refused,
    and requests are allowed (logged once when it starts and once when it ends).
    """

    def __init__(self, redis: ArqRedis, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s ({rate_per_s}) must be > 0 and burst ({burst}) >= 1")
        self.redis = redis
        self.interval_us = max(1, round(US_PER_S / rate_per_s))
        self.burst = burst
        self._script = redis.register_script(lua_script("rate_limit"))
        self._full = False  # in an out-of-memory episode

    def limit_for(self, subject: str) -> RateLimit:
        """`subject`'s rate, for a script that spends it itself (JobStore.submit)."""
        return RateLimit(rate_limit_key(subject), self.interval_us, self.burst)

    def refused(self, retry_after_s: float) -> RateDecision:
        return RateDecision(False, retry_after_s, 0)

    async def hit(self, subject: str) -> RateDecision:
        """Spend one request of `subject`'s rate: one round trip."""
        try:
            reply = await self._script(
                keys=[rate_limit_key(subject)], args=[self.interval_us, self.burst]
            )
        except OutOfMemoryError as exc:
            return self._while_full(exc)
        return self._decision(reply)

    async def hit_then(
        self, subject: str, reads: Callable[[Pipeline], object]
    ) -> tuple[RateDecision, list[Any]]:
        """Spend one request of `subject`'s rate, and run the commands `reads` adds
        to a pipeline, in one round trip: the decision and the reads' replies.

        A pipeline, not a transaction: the reads run whether or not the request
        is allowed (they must only read), and a refused caller gets none of them.
        """
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                # EVALSHA, not the registered Script: on a pipeline, redis-py would
                # send SCRIPT EXISTS first, a round trip of its own, on every call.
                pipe.evalsha(
                    self._script.sha,
                    1,
                    rate_limit_key(subject),
                    str(self.interval_us),
                    str(self.burst),
                )
                reads(pipe)
                limit, *replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            if isinstance(limit, NoScriptError) and attempt == 0:
                # Redis restarted or was flushed since the script was loaded.
                await self.redis.script_load(self._script.script)
                continue
            if isinstance(limit, OutOfMemoryError):
                return self._while_full(limit), replies
            if isinstance(limit, Exception):
                raise limit
            return self._decision(limit), replies
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _decision(self, reply: list[int]) -> RateDecision:
        if self._full:
            self._full = False
            logger.info("rate limits: Redis accepts writes again; limits apply again")
        allowed, retry_after_us, remaining = reply
        return RateDecision(bool(allowed), int(retry_after_us) / US_PER_S, int(remaining))

    def _while_full(self, exc: OutOfMemoryError) -> RateDecision:
        if not self._full:
            self._full = True
            logger.warning(
                "rate limits: Redis is out of memory and refuses the limiter's writes; "
                "requests are allowed without a limit until it has room again: %s",
                exc,
            )
        return ALLOWED_WHILE_FULL
