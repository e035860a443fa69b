"""The operator's console on the status page, as a person uses it: Debian's
chromium, headless, against a real api and worker. JavaScript errors fail
every test here."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Stack, with_reader
from tests.support.auth import TEST_KEY
from tests.support.browser import BrowserErrors, open_page

pytestmark = pytest.mark.e2e

READER_KEY = "cvk_test_console_reader_0123456789abcdef"


@pytest.fixture
def console_stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    yield from with_reader(redis_url, log_dir, READER_KEY)


def opened(tmp_path: Path, key: str) -> Iterator[tuple[Page, BrowserErrors]]:
    with open_page(tmp_path / f"profile-{key[-6:]}") as (page, errors):
        page.add_init_script(f"sessionStorage.setItem('conveyor.apiKey', {key!r})")
        yield page, errors


def assert_no_js_errors(errors: BrowserErrors) -> None:
    assert errors.uncaught == []
    assert errors.console == []


def test_an_operator_finds_dead_jobs_requeues_them_and_sees_them_complete(
    console_stack: Stack, tmp_path: Path
) -> None:
    stack = console_stack
    doomed = [stack.submit("doomed", {})["id"] for _ in range(3)]
    done = [stack.submit("effect", {"work_s": 0})["id"] for _ in range(4)]
    for job_id in doomed:
        stack.wait_for_state(job_id, "dead")
    for job_id in done:
        stack.wait_for_state(job_id, "complete")
    for job_id in doomed:
        stack.redis.set(f"test:healed:{job_id}", 1)
    queue = stack.job(doomed[0])["queue"]

    for page, errors in opened(tmp_path, TEST_KEY):
        page.goto(f"{stack.api.base_url}/ui/")
        expect(page.locator("#whoami")).to_have_text("key tests: may act")

        # Filter to the dead doomed jobs.
        page.select_option("#find-form select[name=state]", "dead")
        page.fill("#find-form input[name=job_type]", "doomed")
        page.click("#find-button")
        rows = page.locator("#found-list li")
        expect(rows).to_have_count(3)
        assert {rows.nth(i).get_attribute("data-job-id") for i in range(3)} == set(doomed)

        # Preview, confirm, and watch them complete.
        page.select_option("#bulk-action", "requeue")
        page.click("#bulk-preview")
        expect(page.locator("#bulk-count")).to_have_text("3 job(s) match.")
        expect(page.locator("#bulk-confirm")).to_have_text("Confirm: requeue 3 job(s)")
        page.click("#bulk-confirm")
        expect(page.locator("#bulk-status")).to_have_attribute("data-state", "done")
        expect(page.locator("#bulk-status")).to_contain_text("requeue: 3 done")
        for job_id in doomed:
            assert stack.wait_for_state(job_id, "complete")["requeues"] == 1
        page.select_option("#find-form select[name=state]", "complete")
        page.click("#find-button")
        expect(rows).to_have_count(3)

        # A job's own URL: its tries (two failed, then the one after the requeue).
        page.goto(f"{stack.api.base_url}/ui/#job={doomed[0]}")
        expect(page.locator("#job-dialog")).to_be_visible()
        expect(page.locator("#detail-tries li")).to_have_count(1)
        expect(page.locator("#detail-tries li").first).to_have_attribute("data-outcome", "complete")
        expect(page.locator('#detail-fields [data-field="trace id"]')).not_to_have_text("—")
        page.click("#detail-close")

        # Charts drawn from the real history: 4 + 3 completed, 3 dead, 10 enqueued.
        chart = page.locator(f'.queue-control[data-queue="{queue}"] svg.chart')
        expect(chart.locator('[data-series="complete"]')).to_have_attribute("data-total", "7")
        expect(chart.locator('[data-series="dead"]')).to_have_attribute("data-total", "3")
        expect(chart.locator('[data-series="enqueued"]')).to_have_attribute("data-total", "7")
        # Each legend entry wears its line's colour.
        legend_and_lines = page.evaluate(
            """queue => [...document.querySelectorAll(
                `.queue-control[data-queue="${queue}"] .legend [data-series]`)].map(entry => [
                getComputedStyle(entry, "::before").borderTopColor,
                getComputedStyle(entry.closest("figure").querySelector(
                    `polyline[data-series="${entry.dataset.series}"]`)).stroke])""",
            queue,
        )
        assert len(legend_and_lines) == 4
        assert all(swatch == stroke for swatch, stroke in legend_and_lines), legend_and_lines
        assert len({stroke for _, stroke in legend_and_lines}) == 4, legend_and_lines

        # Pause and resume the queue.
        control = page.locator(f'.queue-control[data-queue="{queue}"]')
        control.locator(".queue-toggle").click()
        expect(control).to_have_attribute("data-paused", "true")
        assert stack.http.get("/v1/queues").json()["queues"][0]["paused"] is True
        page.locator(f'.queue-control[data-queue="{queue}"] .queue-toggle').click()
        expect(control).to_have_attribute("data-paused", "false")

        # The workers and the audit log.
        expect(page.locator("#workers-list li")).to_have_count(1)
        expect(page.locator('#audit-list li[data-action="resume"]')).to_have_count(1)
        expect(page.locator('#audit-list li[data-action="bulk_requeue"]')).to_have_count(2)
        assert_no_js_errors(errors)


def test_a_read_only_key_sees_everything_and_no_active_controls(
    console_stack: Stack, tmp_path: Path
) -> None:
    stack = console_stack
    dead = stack.submit("doomed", {})["id"]
    stack.wait_for_state(dead, "dead")
    queue = stack.job(dead)["queue"]

    for page, errors in opened(tmp_path, READER_KEY):
        page.goto(f"{stack.api.base_url}/ui/")
        expect(page.locator("#whoami")).to_have_text("key viewer: read-only")
        page.select_option("#find-form select[name=state]", "dead")
        page.click("#find-button")
        expect(page.locator("#found-list li")).to_have_count(1)
        expect(page.locator(f'.queue-control[data-queue="{queue}"]')).to_be_visible()

        expect(page.locator("#bulk-form")).to_be_hidden()
        toggle = page.locator(f'.queue-control[data-queue="{queue}"] .queue-toggle')
        expect(toggle).to_be_hidden()
        expect(toggle).to_be_disabled()
        page.goto(f"{stack.api.base_url}/ui/#job={dead}")
        expect(page.locator("#job-dialog")).to_be_visible()
        expect(page.locator('#detail-fields [data-field="state"]')).to_have_text("dead")
        expect(page.locator("#detail-requeue")).to_be_hidden()
        assert_no_js_errors(errors)
