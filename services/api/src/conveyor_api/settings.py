"""The api's settings, read from `CONVEYOR_API_*` (and `REDIS_*`) environment variables."""

import os
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor_api.auth import ApiKey
from conveyor_core.blobs import BlobSettings
from conveyor_core.enqueue import MAX_DEFER_S
from conveyor_core.settings import CatalogSettings, ObservabilitySettings, RedisSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_API_", extra="ignore")

    # The listen address.
    host: str = "0.0.0.0"  # noqa: S104 - a container listens on all interfaces
    # The listen port (the api, its docs and the status page).
    port: int = Field(default=8000, ge=1, le=65535)
    # Serve /metrics on this port only (and not on `port`), e.g. to keep it
    # off the ingress; unset: on `port` beside the api.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # DEBUG, INFO, WARNING, ERROR or CRITICAL.
    log_level: str = "INFO"
    # How long /readyz waits for Redis to answer PING.
    readiness_timeout_s: float = Field(default=0.5, gt=0)
    # What a 503 tells clients to wait before they try again.
    retry_after_s: int = Field(default=2, ge=1)
    # The api keys (CONVEYOR_API_KEYS): a JSON list of {"name", "sha256", "scopes"},
    # each optionally with its tenant policy: "job_types", "queues",
    # "highest_priority", "max_outstanding_jobs", "reads" ("all" or "own").
    # Without any, the api refuses to start, unless in development.
    keys: list[ApiKey] = Field(default_factory=list)
    # Or a file holding that list (CONVEYOR_API_KEYS_FILE), e.g. a mounted
    # Secret: the api re-reads it while it runs, so keys change without a
    # restart (keyfile.py). Not both: a key in the environment could not be revoked.
    keys_file: Path | None = None
    # How often the api checks the keys file for a change (a revoked key works
    # at most this long after the file changed).
    keys_reload_interval_s: float = Field(default=5.0, gt=0, le=60)
    # Development mode (CONVEYOR_API_DEVELOPMENT): the api may start without
    # keys (every protected route then answers 401). Never in production.
    development: bool = False
    # Requests per second each key may make on average (0: no limit). Kept in
    # Redis: all replicas share one budget.
    rate_limit_per_s: float = Field(default=50.0, ge=0)
    # Requests a key may make at once, above the average.
    rate_limit_burst: int = Field(default=100, ge=1)
    # Requests without a valid key, per client address per second on average
    # (0: no limit), counted in each api process; beyond it: 429. Such requests
    # are answered before their body is read, whatever the limit.
    unauthenticated_rate_per_s: float = Field(default=5.0, ge=0)
    # Requests without a valid key a client address may make at once.
    unauthenticated_burst: int = Field(default=20, ge=1)
    # How many client addresses the limit above remembers (least recent forgotten).
    unauthenticated_max_clients: int = Field(default=10_000, ge=1)
    # How many proxies (an ingress, a load balancer) the api sits behind, each
    # appending the address it was called from to X-Forwarded-For: the client
    # is the address the outermost one wrote. 0: the connection's peer, and
    # X-Forwarded-For is ignored (a client can write anything there).
    trusted_proxy_hops: int = Field(default=0, ge=0, le=10)
    # Request bodies above this size get 413 (routes that take a file upload:
    # max_upload_bytes).
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # JSON bodies nested deeper than this get 422 (deep nesting crashes parsers).
    max_json_depth: int = Field(default=32, ge=2, le=500)
    # A job's payload, as compact JSON, above this size gets 413: payloads
    # travel through Redis on every try; large data belongs in a document, or
    # in a job type that offloads (offload_above_bytes): up to max_upload_bytes.
    max_payload_bytes: int = Field(default=65_536, ge=256)
    # Reading a job shows an offloaded payload or result (claim-check) inline
    # up to this size; a larger one as a link (GET /v1/jobs/{id}/payload or /result).
    inline_blob_bytes: int = Field(default=1_048_576, ge=0)
    # How far ahead a job may be scheduled (defer_by_s, run_at); later gets 422.
    # At most ~100 years, so every due time stays one the api can read back.
    max_defer_s: float = Field(default=MAX_DEFER_S, gt=0, le=100 * 366 * 86_400)
    # Request bodies to routes that take a file upload (a File parameter) above
    # this size get 413: keep it above the largest upload a job module's routes
    # accept (with its multipart framing). Every other route: max_body_bytes.
    max_upload_bytes: int = Field(default=10 * 1_048_576, ge=1024)
    # Uploaded file names longer than this (in characters) are refused.
    max_filename_chars: int = Field(default=255, ge=1, le=1024)
    # Origins allowed to call the api from a browser (comma-separated); none: CORS off.
    cors_origins: str = ""
    # Signs the listing cursors (HMAC), so a client cannot forge a cursor's
    # position: the same secret on every replica (a cursor from one is read by
    # another). Unset: random per process in development, else derived from
    # the api keys' digests.
    cursor_secret: SecretStr | None = None
    # A bulk preview reads at most this many jobs per call; beyond it, it
    # answers a lower bound ("at least").
    preview_max_rows: int = Field(default=10_000, ge=100)
    # A bulk preview takes at most about this long; then it answers a lower bound too.
    preview_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # Live streams (SSE) one key may hold open at once on one api process;
    # one more gets 429.
    sse_streams_per_key: int = Field(default=100, ge=1)
    # Live streams one api process serves at once, all keys together.
    sse_streams_max: int = Field(default=1000, ge=1)
    # The server ends a live stream after this long; the client reconnects
    # (with Last-Event-ID), so no stream pins a process or a key for ever.
    sse_max_lifetime_s: float = Field(default=1800.0, gt=0)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    # Where offloaded payloads and results go (CONVEYOR_BLOBS_*, as the worker's).
    blobs: BlobSettings = Field(default_factory=BlobSettings)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @model_validator(mode="after")
    def _development_not_in_kubernetes(self) -> Self:
        # Kubernetes sets this in every pod: a development api (started without
        # keys, or with `make run`'s all-scope key) must not serve there.
        if self.development and os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise ValueError(
                "CONVEYOR_API_DEVELOPMENT is true inside Kubernetes (KUBERNETES_SERVICE_HOST "
                "is set): development mode is for a developer's machine only; give "
                "CONVEYOR_API_KEYS and unset CONVEYOR_API_DEVELOPMENT"
            )
        return self

    @model_validator(mode="after")
    def _keys_unless_development(self) -> Self:
        if self.keys and self.keys_file is not None:
            raise ValueError(
                "CONVEYOR_API_KEYS and CONVEYOR_API_KEYS_FILE are both set: give the keys "
                "one way (the file can change while the api runs)"
            )
        if not self.keys and self.keys_file is None and not self.development:
            raise ValueError(
                "CONVEYOR_API_KEYS is empty: give at least one api key (or a file of them, "
                "CONVEYOR_API_KEYS_FILE), or set CONVEYOR_API_DEVELOPMENT=true to start "
                "without any (every /v1 request gets 401)"
            )
        return self
