"""Masking secret-looking values before they reach logs, spans or the job api."""

from collections.abc import Iterable
from typing import Any

MASK = "***"
DEFAULT_KEYS = ("password", "token", "secret", "authorization", "email")


class Redactor:
    """Masks the value of every key that contains one of `keys` (any case, any depth)."""

    def __init__(self, keys: Iterable[str] = DEFAULT_KEYS) -> None:
        self.keys = tuple(k.strip().lower() for k in keys if k.strip())

    def is_secret(self, key: str) -> bool:
        lowered = key.lower()
        return any(k in lowered for k in self.keys)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: MASK if isinstance(k, str) and self.is_secret(k) else self(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value
