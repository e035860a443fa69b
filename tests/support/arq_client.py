"""arq's client as the migration page tells a bare arq user to make it: the
page's code block, run as written, so the tests use what the page shows."""

import re
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis

from tests.support.processes import REPO_ROOT

MIGRATION_PAGE = REPO_ROOT / "docs" / "how-to" / "migrate-from-arq.md"
TESTED_BLOCK = re.compile(
    r"<!-- tests/support/arq_client.py runs this block as written -->\n```python\n(.*?)```",
    re.DOTALL,
)


def documented_pool() -> Callable[[str], Awaitable[ArqRedis]]:
    """The migration page's `conveyor_arq_pool`, defined by running its block."""
    blocks = TESTED_BLOCK.findall(MIGRATION_PAGE.read_text())
    assert len(blocks) == 1, "the migration page shows the arq client's pool once"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(MIGRATION_PAGE), "exec"), namespace)
    pool: Callable[[str], Awaitable[ArqRedis]] = namespace["conveyor_arq_pool"]
    return pool


conveyor_arq_pool = documented_pool()
