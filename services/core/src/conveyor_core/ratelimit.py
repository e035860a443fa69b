"""Per-key request rate limits in Redis, so that every api replica shares them."""

import logging
import math
from dataclasses import dataclass

from arq.connections import ArqRedis

from conveyor_core.keys import rate_limit_key
from conveyor_core.lua import lua_script

logger = logging.getLogger(__name__)

US_PER_S = 1_000_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A caller's request rate, spent by the submit and read scripts themselves
    (see lib/gcra.lua)."""

    key: str
    interval_us: int
    burst: int


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


class RateLimiter:
    """GCRA: `rate_per_s` requests a second on average, up to `burst` at once.

    One Lua call per request (a GET and a SET on one small key); the key
    expires as soon as the client is back to a full burst. The submit and read
    scripts spend it themselves (`limit_for`), in their own step.

    Limits apply while Redis is full too: the scripts are `allow-oom`, since
    they rewrite one small key per api key in place (see lua/lib/gcra.lua).
    """

    def __init__(self, redis: ArqRedis, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s ({rate_per_s}) must be > 0 and burst ({burst}) >= 1")
        self.redis = redis
        self.interval_us = max(1, round(US_PER_S / rate_per_s))
        self.burst = burst
        self._script = redis.register_script(lua_script("rate_limit"))

    def limit_for(self, subject: str) -> RateLimit:
        """`subject`'s rate, for a script that spends it itself (JobStore.submit, .read)."""
        return RateLimit(rate_limit_key(subject), self.interval_us, self.burst)

    async def hit(self, subject: str, cost: int = 1) -> RateDecision:
        """Spend `cost` requests of `subject`'s rate, all or none: one round trip.
        (A cost above the burst is never allowed.)"""
        reply = await self._script(
            keys=[rate_limit_key(subject)], args=[self.interval_us, self.burst, cost]
        )
        allowed, retry_after_us, remaining = reply
        return RateDecision(bool(allowed), int(retry_after_us) / US_PER_S, int(remaining))
