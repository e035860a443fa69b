"""Api keys for tests: one with every scope, sent by default by the test clients."""

import json
from collections.abc import Iterable
from typing import Any

from conveyor_api.auth import ApiKey, Scope, key_digest

# Made up for the tests; its hash is what the api is given.
TEST_KEY = "cvk_test_0123456789abcdef0123456789abcdef"
TEST_KEY_NAME = "tests"
ALL_SCOPES = frozenset(Scope)
AUTH_HEADERS = {"Authorization": f"Bearer {TEST_KEY}"}
# Generous, so polling tests never meet it; the Lua script still runs per request.
# So too the limit on requests without a valid key: the tests send many from one address.
RATE_LIMIT_ENV = {
    "CONVEYOR_API_RATE_LIMIT_PER_S": "1000",
    "CONVEYOR_API_RATE_LIMIT_BURST": "1000",
    "CONVEYOR_API_UNAUTHENTICATED_RATE_PER_S": "1000",
    "CONVEYOR_API_UNAUTHENTICATED_BURST": "1000",
}


def api_key(name: str, key: str, scopes: Iterable[Scope] = ALL_SCOPES, **policy: Any) -> ApiKey:
    """A key's entry; `policy` sets its tenant fields (job_types, reads, ...)."""
    return ApiKey(name=name, sha256=key_digest(key), scopes=frozenset(scopes), **policy)


def keys_env(*keys: ApiKey) -> str:
    """`CONVEYOR_API_KEYS` for these keys (the test key when none are given)."""
    keys = keys or (api_key(TEST_KEY_NAME, TEST_KEY),)
    return json.dumps([k.model_dump(mode="json") for k in keys])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
