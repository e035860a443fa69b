"""Request dependencies, named so handler signatures read as sentences.

Each is `async def`: FastAPI runs a plain `def` dependency in its thread pool,
a thread hop (and a fight for the GIL) per dependency per request.
"""

from dataclasses import dataclass
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from conveyor_api.cursors import CursorSigner
from conveyor_api.events import JobEvents
from conveyor_api.settings import Settings
from conveyor_core.catalog import Catalog
from conveyor_core.ratelimit import RateLimiter
from conveyor_core.redaction import Redactor
from conveyor_core.store import JobStore


@dataclass(frozen=True, slots=True)
class Services:
    """What the job routes use, made once at start: the busiest routes take it
    with their caller, from their one dependency (see auth.authorize), since
    FastAPI solves every dependency afresh on every request."""

    redis: ArqRedis
    store: JobStore
    settings: Settings
    redact: Redactor
    rate_limiter: RateLimiter | None  # None: rate limits are off


async def get_redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


async def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


async def get_events(request: Request) -> JobEvents:
    events: JobEvents = request.app.state.events
    return events


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redactor(request: Request) -> Redactor:
    redactor: Redactor = request.app.state.redact
    return redactor


async def get_cursors(request: Request) -> CursorSigner:
    cursors: CursorSigner = request.app.state.cursors
    return cursors


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
EventsDep = Annotated[JobEvents, Depends(get_events)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RedactorDep = Annotated[Redactor, Depends(get_redactor)]
CursorsDep = Annotated[CursorSigner, Depends(get_cursors)]
