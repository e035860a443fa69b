"""Request dependencies, named so handler signatures read as sentences."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from conveyor_api.settings import Settings


def get_redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
