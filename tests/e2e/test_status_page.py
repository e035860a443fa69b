"""The status page as a person sees it: Debian's chromium, headless, against a real
api and worker. JavaScript errors and console errors fail every test here."""

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Request, Response, expect

from conveyor_core.local.redis_server import RedisProcess
from tests.e2e.conftest import Stack, running
from tests.support.auth import TEST_KEY
from tests.support.browser import BrowserErrors, open_page
from tests.support.screenshot import refresh_readme_image

pytestmark = pytest.mark.e2e

# create_task sleeps this long in ten progress steps: long enough to watch.
TASK_ENV = {"CONVEYOR_API_TASK_SLEEP_MIN_S": "1.5", "CONVEYOR_API_TASK_SLEEP_MAX_S": "3"}


@pytest.fixture
def tasks_stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    with running(Stack(redis_url, log_dir, **TASK_ENV), workers=1) as stack:
        yield stack


# As if a person had typed the test key into the page.
HOLD_TEST_KEY = f"sessionStorage.setItem('conveyor.apiKey', {TEST_KEY!r})"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[Page, BrowserErrors]]:
    """A page whose tab already holds the test key, as if a person had typed it."""
    with open_page(tmp_path / "profile") as (page, errors):
        page.add_init_script(HOLD_TEST_KEY)
        yield page, errors


@pytest.fixture
def keyless_browser(tmp_path: Path) -> Iterator[tuple[Page, BrowserErrors]]:
    with open_page(tmp_path / "profile") as opened:
        yield opened


def api_calls(page: Page) -> list[Request]:
    """Every request the page makes to the api (not to its own files)."""
    calls: list[Request] = []
    page.on("request", lambda r: calls.append(r) if "/ui/" not in r.url else None)
    return calls


# Records every value each job's progress bar shows (setting `value` sets the attribute).
RECORD_PROGRESS = """() => {
  window.progressSeen = {};
  new MutationObserver((records) => {
    for (const record of records) {
      const row = record.target.closest("li[data-job-id]");
      if (record.target.tagName !== "PROGRESS" || !row) continue;
      (window.progressSeen[row.dataset.jobId] ??= []).push(record.target.value);
    }
  }).observe(document.getElementById("job-list"), { attributes: true, subtree: true });
}"""
STEPS_SEEN = """() => Object.values(window.progressSeen)
  .map((values) => new Set(values.filter((v) => v > 0 && v < 100)).size)"""


def parse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of an event stream's text."""
    events = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def assert_no_js_errors(errors: BrowserErrors) -> None:
    assert errors.uncaught == []
    assert errors.console == []


def test_submit_watch_progress_requeue_a_dead_job_and_see_it_complete(
    tasks_stack: Stack, browser: tuple[Page, BrowserErrors], log_dir: Path
) -> None:
    page, errors = browser
    calls = api_calls(page)
    stream_responses: list[Response] = []
    page.on("response", lambda r: stream_responses.append(r) if "/v1/events?" in r.url else None)
    page.goto(f"{tasks_stack.api.base_url}/ui")
    page.evaluate(RECORD_PROGRESS)

    # Honest empty states before anything ran.
    expect(page.locator("#jobs-empty")).to_have_text("No jobs yet. Submit a batch of tasks above.")
    expect(page.locator("#dead-empty")).to_have_text("No dead jobs: nothing to requeue.")
    expect(page.locator("#queues-body tr")).to_have_count(1)
    expect(page.locator('#queues-body td[data-label="latency"]')).to_be_in_viewport()

    # Submit five tasks with the keyboard alone.
    page.locator("#count-input").focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("5")
    page.keyboard.press("Enter")
    expect(page.locator("#submit-status")).to_have_text("Queued 5 task(s).")
    rows = page.locator("#job-list li")
    expect(rows).to_have_count(5)

    # Every bar reaches complete...
    for index in range(5):
        row = rows.nth(index)
        expect(row).to_have_attribute("data-state", "complete", timeout=30_000)
        expect(row.locator("progress")).to_have_js_property("value", 100)
        expect(row.locator(".state")).to_have_text("complete")
    # ...having moved step by step on the way (each task reports 10 %, 20 %, ... 90 %),
    # which only a live feed shows: the page reloads its job list every 15 s at most.
    steps_seen = page.evaluate(STEPS_SEEN)
    assert len(steps_seen) == 5
    assert min(steps_seen) >= 3, steps_seen

    # Fed by one multiplexed stream, not by reading each job over and over.
    urls = [call.url for call in calls]
    assert any("/v1/events?" in url for url in urls)
    assert not [url for url in urls if "/v1/jobs/" in url and "?" not in url]

    # Another client submits a job due in 10 minutes and, due in 2 s, one that fails
    # every try. A refresh shows both, and the page watches both on one stream.
    later_id = tasks_stack.submit("effect", {"work_s": 0}, params={"defer_by_s": 600})["id"]
    dead_id = tasks_stack.submit("doomed", {}, params={"defer_by_s": 2})["id"]
    page.locator("#jobs-refresh").click()
    later_row = page.locator(f'#job-list li[data-job-id="{later_id}"]')
    expect(later_row).to_have_attribute("data-state", "deferred")
    expect(page.locator(f'#job-list li[data-job-id="{dead_id}"]')).to_have_attribute(
        "data-state", "deferred"
    )

    # It dies on the stream and lands in the dead letters.
    expect(page.locator(f'#job-list li[data-job-id="{dead_id}"]')).to_have_attribute(
        "data-state", "dead", timeout=30_000
    )
    expect(page.locator("#live-status")).to_have_text("Live: watching 1 unfinished job(s).")
    dead_row = page.locator(f'#dead-list li[data-job-id="{dead_id}"]')
    expect(dead_row).to_contain_text("RuntimeError: boom", timeout=30_000)
    expect(page.locator("#dead-empty")).to_be_hidden()
    page.screenshot(path=log_dir / "status-page-dead-letter.png", full_page=True)
    # The README's picture, from the top of the page: written only when the page
    # changed since it was taken.
    page.evaluate("window.scrollTo(0, 0)")
    readme_image_written = refresh_readme_image(page.screenshot())

    # Its details, opened and closed with the keyboard.
    dead_row.locator("button.link").focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#job-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator('[data-field="state"]')).to_have_text("dead")
    expect(dialog.locator('[data-field="tries"]')).to_have_text("2 of 2")
    expect(dialog.locator("#detail-error")).to_contain_text("RuntimeError: boom")
    expect(dialog.locator('[data-field="trace id"]')).to_have_text(
        tasks_stack.job(dead_id)["trace_id"]
    )
    expect(dialog.locator("#detail-requeue")).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # The cause is fixed; requeue it from the page and watch it complete.
    tasks_stack.redis.set(f"test:healed:{dead_id}", "1")
    dead_row.locator("button.requeue").click()
    expect(page.locator("#dead-empty")).to_have_text("No dead jobs: nothing to requeue.")
    requeued = page.locator(f'#job-list li[data-job-id="{dead_id}"]')
    expect(requeued).to_have_attribute("data-state", "complete", timeout=30_000)
    expect(requeued.locator("progress")).to_have_js_property("value", 100)
    assert tasks_stack.job(dead_id)["result"] == "healed"

    # Cancel the waiting job from its details.
    later_row.locator("button.job-open").click()
    expect(dialog.locator('[data-field="state"]')).to_have_text("deferred")
    dialog.locator("#detail-cancel").click()
    expect(later_row).to_have_attribute("data-state", "cancelled")
    expect(dialog.locator('[data-field="state"]')).to_have_text("cancelled")
    expect(dialog.locator("#detail-cancel")).to_be_hidden()
    page.keyboard.press("Escape")

    # Every job is finished, so every stream has ended: their bodies show that the
    # requeued job's new life came by a stream (the list reloads could show it too).
    bodies = []
    for response in stream_responses:
        # A stream the page closed itself (to open a wider one) has no body to read.
        with contextlib.suppress(PlaywrightError):
            bodies.append(response.text())
    requeued_states = [
        data["state"]
        for body in bodies
        for name, data in parse_events(body)
        if name == "job" and data["id"] == dead_id and data["requeues"] == 1
    ]
    assert "complete" in requeued_states, requeued_states

    # The detail view of a finished task: result, timings, payload.
    page.locator("#job-list li[data-state=complete] button.job-open").last.click()
    expect(dialog.locator('[data-field="state"]')).to_have_text("complete")
    expect(dialog.locator("#detail-result")).not_to_be_empty()
    expect(dialog.locator("#detail-payload")).to_contain_text("sleep_s")
    expect(dialog.locator('[data-field="run time"]')).to_contain_text(" s")
    page.locator("#detail-close").click()

    page.screenshot(path=log_dir / "status-page.png", full_page=True)
    assert_no_js_errors(errors)
    assert not readme_image_written, (
        "the status page changed, so docs/images/status-page.png was taken anew: commit it"
    )


def test_readable_on_a_phone(tasks_stack: Stack, tmp_path: Path, log_dir: Path) -> None:
    tasks_stack.submit("create_task", {"sleep_s": 0.2})
    with open_page(tmp_path / "phone", width=390, height=844) as (page, errors):
        page.add_init_script(HOLD_TEST_KEY)
        page.goto(f"{tasks_stack.api.base_url}/ui/")
        row = page.locator("#job-list li")
        expect(row).to_have_attribute("data-state", "complete", timeout=30_000)
        expect(page.locator("#queues-body td")).to_have_count(5)
        # Nothing reaches past the screen's edge, not even inside a scrolling box.
        too_wide = page.evaluate(
            """() => [...document.querySelectorAll('main *')]
                .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5)
                .map(e => e.outerHTML.slice(0, 80))"""
        )
        assert too_wide == []
        expect(page.locator('#queues-body td[data-label="latency"]')).to_be_in_viewport()
        page.screenshot(path=log_dir / "status-page-phone.png", full_page=True)
        assert_no_js_errors(errors)


def test_payload_secrets_are_masked_in_the_detail_view(
    tasks_stack: Stack, browser: tuple[Page, BrowserErrors]
) -> None:
    page, errors = browser
    job = tasks_stack.submit(
        "welcome", {"email": "ada@example.com", "password": "hunter2", "name": "Ada"}
    )
    page.goto(f"{tasks_stack.api.base_url}/ui/#job={job['id']}")

    payload = page.locator("#detail-payload")
    expect(payload).to_contain_text('"name": "Ada"')
    expect(payload).to_contain_text('"password": "***"')
    expect(payload).not_to_contain_text("hunter2")
    expect(payload).not_to_contain_text("ada@example.com")
    assert_no_js_errors(errors)


def test_a_key_typed_in_goes_with_every_api_call_and_stays_in_this_tab(
    tasks_stack: Stack, keyless_browser: tuple[Page, BrowserErrors]
) -> None:
    page, errors = keyless_browser
    page.goto(f"{tasks_stack.api.base_url}/ui/")
    expect(page.locator("#key-status")).to_have_text("No key set.")
    # Without a key the api refuses, and the page says what to do.
    banner = page.locator("#banner")
    expect(banner).to_have_attribute("data-status", "401")
    expect(banner).to_contain_text("401: enter a key.")

    calls = api_calls(page)
    page.locator("#key-input").fill(TEST_KEY)
    page.locator("#key-input").press("Enter")
    expect(page.locator("#key-status")).to_have_text("A key is set (this tab only).")
    expect(banner).to_be_hidden()
    assert page.evaluate("() => sessionStorage.getItem('conveyor.apiKey')") == TEST_KEY
    assert page.evaluate("() => localStorage.length") == 0

    page.locator("#count-input").fill("2")
    page.locator("#submit-button").click()
    expect(page.locator("#job-list li")).to_have_count(2)
    expect(page.locator("#job-list li").first).to_have_attribute(
        "data-state", "complete", timeout=30_000
    )
    seen = {c.url.split("?")[0].split("/", 3)[-1]: c.headers.get("authorization") for c in calls}
    assert {"task", "v1/events", "v1/queues", "v1/jobs"} <= set(seen)
    assert set(seen.values()) == {f"Bearer {TEST_KEY}"}

    page.locator("#key-forget").click()
    expect(page.locator("#key-status")).to_have_text("No key set.")
    assert page.evaluate("() => sessionStorage.getItem('conveyor.apiKey')") is None
    assert errors.uncaught == []
    # Chromium logs each refused request itself; nothing else may show.
    assert [e for e in errors.console if "status of 401" not in e] == []


def test_redis_down_shows_the_apis_503_problem_then_recovers(
    own_redis: RedisProcess, log_dir: Path, browser: tuple[Page, BrowserErrors]
) -> None:
    page, errors = browser
    stack = Stack(own_redis.url, log_dir)
    try:
        stack.start_api()
        # A job that waits: the page keeps a live stream open for it.
        waiting = stack.submit("effect", {"work_s": 0}, params={"defer_by_s": 600})["id"]
        page.goto(f"{stack.api.base_url}/ui/")
        expect(page.locator("#queues-body tr")).to_have_count(1)
        expect(page.locator("#banner")).to_be_hidden()
        live = page.locator("#live-status")
        expect(live).to_have_text("Live: watching 1 unfinished job(s).")
        row = page.locator(f'#job-list li[data-job-id="{waiting}"]')
        expect(row).to_have_attribute("data-state", "deferred")

        own_redis.stop()
        banner = page.locator("#banner")
        expect(banner).to_be_visible()
        expect(banner).to_have_attribute("data-status", "503")
        expect(banner).to_contain_text("Redis unavailable (503).")
        expect(banner).to_contain_text("The job broker did not answer")
        expect(page.locator("#queues-empty")).to_contain_text("Queue counts unavailable")
        expect(page.locator("#queues-table")).to_be_hidden()
        expect(page.locator("#dead-empty")).to_contain_text("Dead letters unavailable")
        expect(live).to_contain_text("Live updates lost; reconnecting in")
        page.screenshot(path=log_dir / "status-page-redis-down.png", full_page=True)

        own_redis.start()
        expect(banner).to_be_hidden(timeout=30_000)
        expect(page.locator("#queues-body tr")).to_have_count(1)
        # This Redis keeps nothing across a restart: the stream, back, reports the job gone.
        expect(row).to_have_count(0, timeout=30_000)
        expect(page.locator("#jobs-empty")).to_be_visible()
    finally:
        stack.close()
    assert errors.uncaught == []
    # The browser reports each failed request itself; the page's own code logged nothing.
    assert [e for e in errors.console if "status of 503" not in e] == []


# Feeds sse.js's parser chunks cut at awkward places: inside a field, between
# CR and LF, mid multi-byte character; with comments, ids and multi-line data.
PARSE_CHUNKS = """async (chunks) => {
  const { readEvents } = await import("./sse.js");
  const encoder = new TextEncoder();
  const bytes = chunks.map((chunk) => encoder.encode(chunk));
  // Split the euro sign's three bytes across two chunks.
  const euro = bytes.findIndex((b) => b.length > 3 && new TextDecoder().decode(b).includes("€"));
  if (euro >= 0) {
    const at = new TextDecoder().decode(bytes[euro]).indexOf("€");
    const cut = encoder.encode(new TextDecoder().decode(bytes[euro]).slice(0, at)).length + 1;
    bytes.splice(euro, 1, bytes[euro].slice(0, cut), bytes[euro].slice(cut));
  }
  const body = new ReadableStream({
    start(controller) {
      for (const b of bytes) controller.enqueue(b);
      controller.close();
    },
  });
  const seen = [];
  await readEvents(body, (name, data, id) => seen.push([name, data, id]));
  return seen;
}"""


def test_the_stream_parser_reads_what_the_format_allows(
    redis_url: str, log_dir: Path, browser: tuple[Page, BrowserErrors]
) -> None:
    page, errors = browser
    stack = Stack(redis_url, log_dir)
    try:
        stack.start_api()
        page.goto(f"{stack.api.base_url}/ui/")
        seen = page.evaluate(
            PARSE_CHUNKS,
            [
                ": keep-alive\n\nevent: jo",
                'b\ndata: {"a": 1}\nid: 7\n\n',
                "data: line one\r",
                "\ndata: line two\r\n\r\n",
                "event: price\ndata: 5 €\n\n",
                "data:no space\nid\n\n",
                "event: dropped\n\n",  # no data: not an event
                "data: unfinished",  # cut off by the close: not an event
            ],
        )
    finally:
        stack.close()

    assert seen == [
        ["job", '{"a": 1}', "7"],
        ["message", "line one\nline two", "7"],  # the last id stays until a new one
        ["price", "5 €", "7"],
        ["message", "no space", ""],  # a bare `id` resets it
    ]
    assert_no_js_errors(errors)
