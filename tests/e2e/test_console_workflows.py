"""A workflow in the status page's console, as a person uses it: Debian's
chromium, headless, against a real api and worker. A group's graph (members
a page at a time, continuations, nested groups), live as its jobs end, and
its actions for a key that may act. JavaScript errors fail every test here."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from conveyor_api.auth import Scope
from tests.e2e.conftest import Stack, running
from tests.e2e.test_console import assert_no_js_errors, opened
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, keys_env
from tests.support.browser import open_page

pytestmark = pytest.mark.e2e

READER_KEY = "cvk_test_console_workflow_reader_0123456789"
MEMBERS = 500


@pytest.fixture
def idle_stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api (the test key and a read-only one), no worker until a test starts one."""
    keys = keys_env(
        api_key(TEST_KEY_NAME, TEST_KEY), api_key("viewer", READER_KEY, [Scope.JOBS_READ])
    )
    with running(Stack(redis_url, log_dir, CONVEYOR_API_KEYS=keys)) as stack:
        yield stack


def start_group(stack: Stack, children: list[dict[str, Any]]) -> str:
    body = {"children": children, "then": {"job_type": "combine", "payload": {}}}
    response = stack.http.post("/v1/groups", json=body)
    assert response.status_code == 201, response.text
    group_id: str = response.json()["id"]
    return group_id


def member(index: int, **payload: Any) -> dict[str, Any]:
    return {"job_type": "member", "payload": {"index": index, **payload}}


def test_a_big_workflow_shows_a_page_of_its_graph_live_with_its_nested_groups(
    idle_stack: Stack, tmp_path: Path, log_dir: Path
) -> None:
    stack = idle_stack
    # Two members fan out again (nested groups); the rest are plain members.
    fan_outs = [{"job_type": "fan_out", "payload": {"children": 3}} for _ in range(2)]
    gid = start_group(stack, fan_outs + [member(i) for i in range(2, MEMBERS)])

    for page, errors in opened(tmp_path, TEST_KEY):
        page.goto(f"{stack.api.base_url}/ui/#workflow={gid}.2")
        top = page.locator(f'section.wf-group[data-group-id="{gid}"]')
        expect(top).to_have_attribute("data-state", "running")
        expect(top.locator(":scope > .wf-counts > .wf-counts-text")).to_have_text(
            f"{MEMBERS} member(s): 0 complete, {MEMBERS} pending, 0 dead, 0 cancelled"
        )
        # Counts and one page of members, not 500 boxes.
        expect(top.locator(":scope > ol.wf-members > li")).to_have_count(20)
        expect(top.locator(":scope > .wf-pager > span")).to_have_text(
            f"Members 1\u201320 of {MEMBERS}"
        )
        expect(page.locator(f'#workflow-tree li[data-job-id="{gid}.2"]')).to_have_attribute(
            "aria-current", "true"
        )
        then = page.locator(f'#workflow-tree li[data-job-id="{gid}.then"]')
        expect(then.locator(".state")).to_have_text("waits for the members")
        expect(page.locator("#workflow-live")).to_have_text("Live: updates as its jobs end.")

        # A worker runs it all: the page follows without a reload.
        stack.start_worker()
        expect(top).to_have_attribute("data-state", "done", timeout=90_000)
        expect(top.locator(":scope > .wf-counts > .wf-counts-text")).to_have_text(
            f"{MEMBERS} member(s): {MEMBERS} complete, 0 pending, 0 dead, 0 cancelled"
        )
        expect(then).to_have_attribute("data-state", "complete", timeout=30_000)
        nested = page.locator(
            f'#workflow-tree li[data-job-id="{gid}.0"] .wf-nested section.wf-group'
        )
        expect(nested).to_have_count(1)
        expect(nested).to_have_attribute("data-state", "done")
        expect(nested.locator("ol.wf-members > li")).to_have_count(3)
        expect(nested.locator("ul.wf-then > li")).to_have_attribute("data-state", "complete")
        expect(page.locator("#workflow-live")).to_have_text("Finished: nothing left to run.")
        assert page.locator("#workflow-tree li").count() <= 20 + 2 * 4 + 1
        page.locator("#workflow").screenshot(path=log_dir / "workflow.png")

        # The next page, by keyboard.
        page.locator(".wf-next").focus()
        page.keyboard.press("Enter")
        expect(top.locator(":scope > .wf-pager > span")).to_have_text(
            f"Members 21\u201340 of {MEMBERS}"
        )
        expect(page.locator(f'#workflow-tree li[data-job-id="{gid}.20"]')).to_have_attribute(
            "data-state", "complete"
        )
        expect(page.locator(".wf-next")).to_be_focused()  # a redraw keeps the focus

        # From a job's view to its workflow.
        page.goto(f"{stack.api.base_url}/ui/#job={gid}.7")
        expect(page.locator("#job-dialog")).to_be_visible()
        expect(page.locator("#detail-workflow")).to_be_visible()
        expect(page.locator("#detail-workflow-text")).to_contain_text("done")
        page.click("#detail-workflow-link")
        expect(page.locator("#job-dialog")).to_be_hidden()
        expect(page.locator(f'#workflow-tree li[data-job-id="{gid}.7"]')).to_have_attribute(
            "aria-current", "true"
        )

        # A member past the first page opens on its own page.
        page.goto(f"{stack.api.base_url}/ui/#workflow={gid}.230")
        expect(top.locator(":scope > .wf-pager > span")).to_have_text(
            f"Members 221\u2013240 of {MEMBERS}"
        )
        expect(page.locator(f'#workflow-tree li[data-job-id="{gid}.230"]')).to_have_attribute(
            "aria-current", "true"
        )
        assert_no_js_errors(errors)


def test_a_failed_workflow_says_why_and_a_key_that_may_act_requeues_or_cancels_it(
    idle_stack: Stack, tmp_path: Path, log_dir: Path
) -> None:
    stack = idle_stack
    stack.start_worker()
    failing = start_group(stack, [member(0), member(1, fail=True), member(2)])
    stack.wait_for_state(f"{failing}.1", "dead")
    slow = start_group(stack, [member(i, work_s=60) for i in range(2)])

    for page, errors in opened(tmp_path, READER_KEY):
        page.goto(f"{stack.api.base_url}/ui/#workflow={failing}")
        group = page.locator(f'section.wf-group[data-group-id="{failing}"]')
        expect(group).to_have_attribute("data-state", "failed")
        expect(group.locator(".wf-failed")).to_contain_text("member 1 fails on purpose")
        expect(
            page.locator(f'#workflow-tree li[data-job-id="{failing}.then"] .state')
        ).to_have_text("will not run (group failed)")
        expect(page.locator("#whoami")).to_have_text("key viewer: read-only")
        expect(group.locator(".wf-actions")).to_be_hidden()
        assert_no_js_errors(errors)

    for page, errors in opened(tmp_path, TEST_KEY):
        page.goto(f"{stack.api.base_url}/ui/#workflow={failing}")
        group = page.locator(f'section.wf-group[data-group-id="{failing}"]')
        expect(page.locator("#whoami")).to_have_text("key tests: may act")
        expect(group.locator(".wf-requeue")).to_be_enabled()
        group.locator(".wf-requeue").click()
        expect(page.locator("#workflow-status")).to_have_text(
            f"Requeued 1 job(s) of group {failing[:8]}…."
        )
        # Its member fails for good again: the group says so again.
        expect(page.locator(f'#workflow-tree li[data-job-id="{failing}.1"]')).to_have_attribute(
            "data-state", "dead"
        )

        page.goto(f"{stack.api.base_url}/ui/#workflow={slow}")
        group = page.locator(f'section.wf-group[data-group-id="{slow}"]')
        expect(group).to_have_attribute("data-state", "running")
        group.locator(".wf-cancel").click()
        expect(group.locator(".wf-cancel")).to_have_text("Confirm: cancel the whole group")
        group.locator(".wf-cancel").click()
        expect(group).to_have_attribute("data-state", "cancelled")
        expect(page.locator("#workflow-status")).to_contain_text("Cancelled 2 job(s)")
        page.locator("#workflow").screenshot(path=log_dir / "workflow-cancelled.png")
        expect(page.locator(f'#workflow-tree li[data-job-id="{slow}.then"] .state')).to_have_text(
            "will not run (group cancelled)"
        )
        assert_no_js_errors(errors)
    assert stack.job(f"{slow}.0")["state"] in ("cancelled", "in_progress")

    # On a phone, nothing of the graph reaches past the screen's edge.
    with open_page(tmp_path / "phone", width=390, height=844) as (page, errors):
        page.add_init_script(f"sessionStorage.setItem('conveyor.apiKey', {TEST_KEY!r})")
        page.goto(f"{stack.api.base_url}/ui/#workflow={failing}.1")
        expect(page.locator(f'section.wf-group[data-group-id="{failing}"]')).to_be_visible()
        expect(page.locator(".wf-requeue")).to_be_visible()
        too_wide = page.evaluate(
            """() => [...document.querySelectorAll('#workflow *')]
                .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5)
                .map(e => e.outerHTML.slice(0, 80))"""
        )
        assert too_wide == []
        page.screenshot(path=log_dir / "workflow-phone.png", full_page=True)
        assert_no_js_errors(errors)
