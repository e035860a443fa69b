"""The audit log reaches the log pipeline: the api as a process writes each
operator action as one JSON line on its output (what a log collector ships),
with the request id that asked for it, and nothing for an action that
changed nothing."""

from pathlib import Path

import pytest

from conveyor_seed import CREATE_TASK
from tests.e2e.conftest import Stack, running
from tests.support.auth import TEST_KEY_NAME

pytestmark = pytest.mark.e2e


def test_each_change_is_one_log_line_with_its_request_id(redis_url: str, log_dir: Path) -> None:
    queue = CREATE_TASK.queue
    with running(Stack(redis_url, log_dir)) as stack:
        asked = [
            ("pause", "a" * 32),
            ("pause", "b" * 32),  # already paused: no change
            ("resume", "c" * 32),
        ]
        for action, request_id in asked:
            response = stack.http.post(
                f"/v1/queues/{queue}/{action}", headers={"X-Request-ID": request_id}
            )
            assert response.status_code == 200, response.text
        entries = stack.http.get("/v1/audit").json()["items"][::-1]
    # Read once the api has stopped: a busy process's lines wait up to
    # logstream.FLUSH_INTERVAL_S, and its exit writes them all.
    lines = [line for line in stack.log_lines(stack.api) if line["logger"] == "conveyor.audit"]

    assert [(e["action"], e["request_id"]) for e in entries] == [
        ("pause", "a" * 32),
        ("resume", "c" * 32),
    ]
    assert [
        (line["action"], line["target"], line["who"], line["request_id"], line["audit_id"])
        for line in lines
    ] == [(e["action"], queue, TEST_KEY_NAME, e["request_id"], e["id"]) for e in entries]
