"""Request dependencies, named so handler signatures read as sentences."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from conveyor_api.events import JobEvents
from conveyor_api.settings import Settings
from conveyor_core.catalog import Catalog
from conveyor_core.redaction import Redactor
from conveyor_core.store import JobStore


def get_redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


def get_events(request: Request) -> JobEvents:
    events: JobEvents = request.app.state.events
    return events


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_redactor(request: Request) -> Redactor:
    redactor: Redactor = request.app.state.redact
    return redactor


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
EventsDep = Annotated[JobEvents, Depends(get_events)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RedactorDep = Annotated[Redactor, Depends(get_redactor)]
