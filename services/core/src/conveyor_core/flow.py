"""Flow control declared on a job type: how many of its jobs may run at once and
how fast they may start, for the whole type and per key (a payload field,
such as a tenant id), across every worker.

The claim enforces it in Redis, atomically (lua/claim.lua). Only jobs of
limited types pay for it: the claim reads a job's type from its job data,
and a job of a type with a key gets a small entry (its type and key) in its
queue's flow hash at submit, so the claim knows its key without decoding the
payload; jobs of other types cost exactly what they did.
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `starts` job starts in any `per_s` seconds (a sliding window)."""

    starts: int
    per_s: float = 1.0

    def problems(self, name: str) -> list[str]:
        found = []
        if not _positive_int(self.starts):
            found.append(f"{name}.starts must be a positive integer, not {self.starts!r}")
        number = isinstance(self.per_s, int | float) and not isinstance(self.per_s, bool)
        if not number or not self.per_s > 0:
            found.append(f"{name}.per_s must be a positive number of seconds, not {self.per_s!r}")
        return found

    @property
    def per_ms(self) -> int:
        return max(round(self.per_s * 1000), 1)


@dataclass(frozen=True, slots=True)
class Limits:
    """A job type's limits. A job over one stays queued: it takes no worker slot,
    uses no try and is not a failure; its record says why it waits."""

    # At most this many of the type's jobs run at once.
    max_running: int | None = None
    # A payload field: its value is the job's key for the per-key limits.
    key: str | None = None
    # At most this many run at once per key.
    max_running_per_key: int | None = None
    # At most this many start per period, for the whole type.
    rate: Rate | None = None
    # At most this many start per period, per key.
    rate_per_key: Rate | None = None

    def problems(self, payload: type[BaseModel]) -> list[str]:
        """What is wrong with these limits for a payload model; empty when nothing."""
        found = []
        for name in ("max_running", "max_running_per_key"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                found.append(f"{name} must be a positive integer, not {value!r}")
        for name in ("rate", "rate_per_key"):
            rate = getattr(self, name)
            if rate is not None:
                found += rate.problems(name)
        per_key = self.max_running_per_key is not None or self.rate_per_key is not None
        if per_key and not self.key:
            found.append("a per-key limit needs `key`, the payload field that names the key")
        if self.key:
            field = payload.model_fields.get(self.key)
            if field is None:
                found.append(f"key {self.key!r} is not a field of {payload.__name__}")
            elif not field.is_required():
                found.append(f"key {self.key!r} must be a required field of {payload.__name__}")
        return found


def fairness_key(limits: Limits | None, payload: Mapping[str, Any]) -> str | None:
    """A job's key for the per-key limits and turns, as text; None when its
    type has no key. Never empty (an empty key means "no key"): a string as
    it is, anything else (None, a number, "") as JSON."""
    if limits is None or not limits.key:
        return None
    key = payload.get(limits.key)
    return key if isinstance(key, str) and key else json.dumps(key)


def flow_entry(job_type: str, limits: Limits | None, payload: Mapping[str, Any]) -> str:
    """A job's entry in its queue's flow hash: its type and key, for a type
    with a key; '' for others (the claim reads a job's type from its job data)."""
    key = fairness_key(limits, payload)
    return f"{job_type}\n{key}" if key is not None else ""


def shard_share(total: int, shards: int, index: int) -> int:
    """Shard `index`'s part of a whole type's limit of `total` over `shards`
    shards: an even split, the first `total % shards` shards one more, and at
    least 1 (so every shard can run the type; the sum is max(total, shards))."""
    return max(total // shards + (1 if index < total % shards else 0), 1)


def claim_limits(limited: Iterable[tuple[str, Limits]], shards: int = 1, index: int = 0) -> str:
    """The limits of a queue's job types as the claim of shard `index` of
    `shards` reads them (JSON); '' for none. A whole type's running limit and
    rate are split over the shards (shard_share); a key's are not: a key's
    jobs all go to one shard (Catalog.shard_for)."""
    out: dict[str, dict[str, Any]] = {}
    for name, limits in limited:
        entry: dict[str, Any] = {}
        if limits.max_running is not None:
            entry["n"] = shard_share(limits.max_running, shards, index)
        if limits.max_running_per_key is not None:
            entry["kn"] = limits.max_running_per_key
        if limits.rate is not None:
            starts = shard_share(limits.rate.starts, shards, index)
            entry["r"] = [starts, limits.rate.per_ms]
        if limits.rate_per_key is not None:
            entry["kr"] = [limits.rate_per_key.starts, limits.rate_per_key.per_ms]
        if limits.key:  # its jobs' keys are in the flow hash
            entry["k"] = 1
        out[name] = entry
    return json.dumps(out, separators=(",", ":")) if out else ""
