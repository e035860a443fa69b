"""The `conveyor` command against a hostile or careless api: what it prints is
never a command to the terminal, and its key never comes from the command
line. (tests/e2e/test_cli.py runs it against a live api.)"""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor_api.cli import EXIT_AUTH, EXIT_OK, EXIT_USAGE, main, printable

KEY = "cvk_cli_test_key"
# What a job's error message (or any text the api echoes) might carry.
HOSTILE = (
    "boom\x1b[2J\x1b[31mred\x1b[0m"  # clear the screen, colours
    "\x1b]0;owned\x07"  # set the window title
    "\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\"  # a hyperlink
    "\x9b31m\x07\x08\x00\r"  # C1 CSI, bell, backspace, NUL, carriage return
    "\u202eevil"  # right-to-left override
    "\tend"
)
CLEAN = "boomredlink31mevil\tend"

JOB = {
    "id": "job-1",
    "job_type": "send\x1b[8m_email",
    "queue": "default",
    "state": "dead",
    "tries": 3,
    "error": {"type": "SMTPError", "message": HOSTILE, "traceback": f"line 1\n{HOSTILE}"},
    "enqueued_at": "2026-12-05T08:00:00Z",
    "finished_at": None,
}


def test_printable_strips_escapes_and_controls_but_keeps_tabs_and_newlines() -> None:
    assert printable(HOSTILE) == CLEAN
    assert printable("a\nb\tc") == "a\nb\tc"
    assert printable("naïve — ok ✓") == "naïve — ok ✓"
    assert printable("\x1b") == ""


def api(seen: list[httpx.Request], status: int = 200, body: Any = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_API_KEY", raising=False)


@pytest.mark.parametrize("command", [["jobs", "show", "job-1"], ["jobs", "list"]])
def test_what_the_api_sends_reaches_the_terminal_without_control_characters(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("CONVEYOR_API_KEY", KEY)
    body = JOB if command[1] == "show" else {"items": [JOB], "next_cursor": None}
    assert main(command, transport=api([], body=body)) == EXIT_OK
    out = capsys.readouterr().out
    for control in ("\x1b", "\x9b", "\x07", "\u202e", "\r", "\x00"):
        assert control not in out
    assert "send_email" in out
    assert "boomred" in out


def test_an_error_detail_reaches_the_terminal_without_control_characters(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_API_KEY", KEY)
    transport = api([], status=401, body={"detail": HOSTILE})
    assert main(["jobs", "show", "job-1"], transport=transport) == EXIT_AUTH
    err = capsys.readouterr().err
    assert CLEAN in err
    assert "\x1b" not in err


def test_json_output_escapes_every_control_character(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_API_KEY", KEY)
    assert main(["--json", "jobs", "show", "job-1"], transport=api([], body=JOB)) == EXIT_OK
    out = capsys.readouterr().out
    assert json.loads(out) == JOB  # nothing lost: escaped, not stripped
    assert "\x1b" not in out
    assert "\u202e" not in out


def test_a_key_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[httpx.Request] = []
    assert main(["--key", KEY, "queues"], transport=api(seen)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--key is not accepted" in err
    assert "CONVEYOR_API_KEY" in err
    assert "--key-file" in err
    assert seen == []


def test_the_key_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[httpx.Request] = []
    body: dict[str, Any] = {"queues": []}
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}-from-file\n")
    assert main(["--key-file", str(key_file), "queues"], transport=api(seen, body=body)) == 0
    monkeypatch.setenv("CONVEYOR_API_KEY", KEY)
    assert main(["queues"], transport=api(seen, body=body)) == 0
    assert [r.headers["authorization"] for r in seen] == [
        f"Bearer {KEY}-from-file",
        f"Bearer {KEY}",
    ]

    monkeypatch.delenv("CONVEYOR_API_KEY")
    assert main(["queues"], transport=api(seen, body=body)) == EXIT_AUTH
    (tmp_path / "empty").write_text("\n")
    assert main(["--key-file", str(tmp_path / "empty"), "queues"]) == EXIT_AUTH
    assert main(["--key-file", str(tmp_path / "missing"), "queues"]) == EXIT_USAGE
    err = capsys.readouterr().err
    for why in ("no api key", "is empty", "cannot read the key file"):
        assert why in err
    assert len(seen) == 2


def test_requeue_resumes_unless_asked_to_start_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_KEY", KEY)
    seen: list[httpx.Request] = []
    assert main(["jobs", "requeue", "job-1"], transport=api(seen, body=JOB)) == EXIT_OK
    assert main(["jobs", "requeue", "job-1", "--start-over"], transport=api(seen, body=JOB)) == 0
    assert [(r.method, r.url.path, dict(r.url.params)) for r in seen] == [
        ("POST", "/v1/jobs/job-1/retry", {}),
        ("POST", "/v1/jobs/job-1/retry", {"start_over": "true"}),
    ]


def _group(gid: str, members: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    counts = {"pending": 0, "complete": len(members), "dead": 0, "cancelled": 0}
    return {"id": gid, "kind": "group", "state": "done", "on_child_failure": "fail",
            "total": len(members), "counts": counts, "offset": 0, "next_offset": None,
            "members": members, "continuation_jobs": [], "failed": None, **fields}  # fmt: skip


# CLEAN on one line, as a tree shows text the api sends.
ONE_LINE = " ".join(CLEAN.split())


def test_a_workflow_tree_nests_groups_and_strips_control_characters(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_API_KEY", KEY)
    inner = _group("g2", [{"id": "g2.0", "index": 0, "job_type": "leaf", "state": "complete"}])
    outer = _group(
        "g1",
        [
            {"id": "g1.0", "index": 0, "job_type": HOSTILE, "state": "dead", "error": HOSTILE},
            {"id": "g1.1", "index": 1, "job_type": "fork", "state": "complete", "groups": [inner]},
        ],
        continuation_jobs=[{"id": "g1.then", "job_type": "join", "state": None, "when": "always"}],
    )
    tree = {"focus": "g2.0", "root": None, "groups": [outer], "truncated": False}
    seen: list[httpx.Request] = []
    assert main(["jobs", "tree", "g2.0"], transport=api(seen, body=tree)) == EXIT_OK
    assert seen[0].url.path == "/v1/workflows/g2.0"
    assert dict(seen[0].url.params) == {"limit": "20"}  # the api picks the focus's page
    out = capsys.readouterr().out
    for control in ("\x1b", "\x9b", "\x07", "\u202e", "\r", "\x00"):
        assert control not in out
    assert out.splitlines() == [
        "group g1 done: 2 members (2 complete, 0 pending, 0 dead, 0 cancelled), "
        "on child failure: fail",
        f"├─ [0] {ONE_LINE} g1.0 dead · {ONE_LINE}",
        "├─ [1] fork g1.1 complete",
        "│  └─ group g2 done: 1 members (1 complete, 0 pending, 0 dead, 0 cancelled), "
        "on child failure: fail",
        "│     └─ [0] leaf g2.0 complete  <-",
        "└─ then join g1.then expired",
    ]


def test_a_job_id_with_its_queue_tag_is_sent_as_one_encoded_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_API_KEY", KEY)
    seen: list[httpx.Request] = []
    job_id = "{arq:queue}3f2a"
    for command in (["show", job_id], ["cancel", job_id], ["requeue", job_id]):
        assert main(["jobs", *command], transport=api(seen, body=JOB)) == EXIT_OK
    assert [r.url.raw_path for r in seen] == [
        b"/v1/jobs/%7Barq%3Aqueue%7D3f2a",
        b"/v1/jobs/%7Barq%3Aqueue%7D3f2a",
        b"/v1/jobs/%7Barq%3Aqueue%7D3f2a/retry",
    ]
    assert {r.url.path.removesuffix("/retry") for r in seen} == {f"/v1/jobs/{job_id}"}
