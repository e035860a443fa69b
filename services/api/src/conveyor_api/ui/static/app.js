// The status page: submit tasks, watch recent jobs live over one multiplexed
// SSE stream, see queue counts and the dead letters, requeue, inspect a job.

import { ApiError, apiKey, apiUrl, authHeaders, call, setApiKey } from "./api.js";
import {
  TERMINAL_STATES,
  masked,
  pretty,
  seconds,
  secondsBetween,
  shortId,
  stateLabel,
  time,
} from "./format.js";
import { $, el } from "./dom.js";
import { EventStream } from "./sse.js";
import { describeWorkflow } from "./workflow.js";

// The api's bound on one /v1/events stream, and so on the jobs the list shows.
const MAX_SHOWN = 100;
// The recent list (not the progress, which streams) reloads every this many refreshes.
const LIST_EVERY = 5;

const page = {
  config: {
    redact_keys: ["password", "token", "secret", "authorization", "email"],
    refresh_s: 3,
    submit_tasks: true,
    caught_mail: false,
  },
  jobs: new Map(), // id -> the latest job seen
  rows: new Map(), // id -> its <li>
  dead: null, // the dead letters, once read
  mail: null, // the caught mails (development mode), once read
  queues: null, // the queue counts, once read
  jobsLoaded: false,
  problems: new Map(), // where a problem came from -> ApiError
  stream: null,
  streamIds: new Set(), // the jobs the open stream still watches
  streamOpen: false,
  detailId: null,
};

// -- problems ---------------------------------------------------------------

function problemText(err) {
  if (err.needsKey) {
    return err.status === 401
      ? "401 Unauthorized: enter an API key above."
      : "403 Forbidden: this key lacks the scope for that; enter another key above.";
  }
  const status = err.status ? ` (${err.status})` : "";
  return `${err.problem.title}${status}: ${err.problem.detail ?? ""}`.trim();
}

function setProblem(source, err) {
  if ((page.problems.get(source) ?? null) === (err ?? null)) return;
  if (err) page.problems.set(source, err);
  else page.problems.delete(source);
  scheduleRender();
  const all = [...page.problems.values()];
  const shown = all.find((e) => e.needsKey) ?? all.find((e) => e.status === 503) ?? all[0];
  const banner = $("banner");
  banner.hidden = !shown;
  banner.dataset.status = shown ? String(shown.status) : "";
  if (!shown) return;
  if (shown.needsKey) {
    $("banner-title").textContent = `${shown.status}: enter a key.`;
    $("banner-detail").textContent = shown.status === 401
      ? "The api needs an API key: type it in the field above."
      : "This key may not do that (a scope is missing): use another key.";
  } else {
    const status = shown.status ? ` (${shown.status})` : "";
    $("banner-title").textContent = `${shown.problem.title}${status}.`;
    $("banner-detail").textContent = shown.problem.detail ?? "";
  }
}

// -- jobs and the live stream -----------------------------------------------

function upsert(job) {
  // A stream stops watching a job it has seen finished. Whoever told the page so,
  // it no longer counts on the open stream for that job: if the job comes back
  // (requeued), the next render opens a stream that watches it again.
  if (TERMINAL_STATES.has(job.state)) page.streamIds.delete(job.id);
  const known = page.jobs.get(job.id);
  if (!known || known.version <= job.version) page.jobs.set(job.id, job);
  scheduleRender();
}

/** A job just submitted: shown at once, filled in by the stream's first event. */
function placeholder(id, jobType) {
  return {
    id,
    version: 0,
    job_type: jobType,
    state: "queued",
    progress: { percent: 0, message: "" },
    enqueued_at: new Date().toISOString(),
  };
}

function shownJobs() {
  return [...page.jobs.values()]
    .sort((a, b) => (a.enqueued_at < b.enqueued_at ? 1 : a.enqueued_at > b.enqueued_at ? -1 : 0))
    .slice(0, MAX_SHOWN);
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderJobs();
    renderDetail();
    syncStream();
  });
}

function jobRow(id) {
  const open = el("button", { type: "button", class: "job-open link" });
  open.addEventListener("click", () => openDetail(id));
  const bar = el("progress", { max: "100", value: "0" });
  const row = el(
    "li",
    { class: "job", "data-job-id": id },
    open,
    el("span", { class: "state" }),
    bar,
    el("span", { class: "progress-text muted" }),
  );
  page.rows.set(id, row);
  return row;
}

function renderRow(row, job) {
  const percent = job.state === "complete" ? 100 : job.progress.percent;
  row.dataset.state = job.state;
  const open = row.querySelector(".job-open");
  open.replaceChildren(el("span", {}, job.job_type), " ", el("code", {}, shortId(job.id)));
  open.setAttribute("aria-label", `${job.job_type} job ${job.id}: details`);
  const badge = row.querySelector(".state");
  badge.textContent = stateLabel(job.state);
  const bar = row.querySelector("progress");
  bar.value = percent;
  bar.setAttribute("aria-label", `${job.job_type} ${shortId(job.id)}: ${percent}%`);
  const message = job.error && job.state !== "complete" ? job.error.message : job.progress.message;
  row.querySelector(".progress-text").textContent = `${percent}%${message ? ` · ${message}` : ""}`;
}

function renderJobs() {
  const list = $("job-list");
  const shown = shownJobs();
  const keep = new Set(shown.map((job) => job.id));
  for (const [id, row] of page.rows) {
    if (!keep.has(id)) {
      row.remove();
      page.rows.delete(id);
    }
  }
  shown.forEach((job, index) => {
    const row = page.rows.get(job.id) ?? jobRow(job.id);
    renderRow(row, job);
    // Move a row only when it is out of place, so a focused button keeps focus.
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] ?? null);
  });
  const empty = $("jobs-empty");
  empty.hidden = shown.length > 0;
  if (!shown.length) {
    // An outage elsewhere on the page means "no jobs" may be stale: say so.
    const err = page.problems.get("jobs") ?? [...page.problems.values()].find((e) => e.status === 503);
    empty.textContent = err
      ? `Jobs unavailable: ${problemText(err)}`
      : page.jobsLoaded ? "No jobs yet. Submit a batch of tasks above." : "Loading…";
  }
}

/** One stream for every unfinished job shown (and the one in the detail view). */
function syncStream() {
  const wanted = shownJobs().filter((job) => !TERMINAL_STATES.has(job.state)).map((job) => job.id);
  const detail = page.jobs.get(page.detailId);
  if (detail && !TERMINAL_STATES.has(detail.state) && !wanted.includes(detail.id)) {
    wanted.splice(MAX_SHOWN - 1, Infinity, detail.id);
  }
  // The server stops watching finished jobs by itself: restart only for new ones.
  if (page.stream && wanted.every((id) => page.streamIds.has(id))) {
    // Only a real change: a live region re-announces any text set on it.
    if (page.streamOpen && $("live-status").textContent !== liveText()) {
      $("live-status").textContent = liveText();
    }
    return;
  }
  page.streamOpen = false;
  page.stream?.close();
  page.stream = null;
  page.streamIds = new Set(wanted);
  if (!wanted.length) {
    $("live-status").textContent = page.jobs.size ? "Live: every job shown has finished." : "";
    return;
  }
  const url = apiUrl("/v1/events", wanted.map((id) => ["job_id", id]));
  page.stream = new EventStream(url, {
    headers: authHeaders,
    onEvent: onStreamEvent,
    onState: onStreamState,
  }).start();
}

function liveText() {
  return `Live: watching ${page.streamIds.size} unfinished job(s).`;
}

function restartStream() {
  page.stream?.close();
  page.stream = null;
  syncStream();
}

function onStreamEvent(name, data) {
  if (name === "job") upsert(data);
  else if (name === "missing") {
    page.streamIds.delete(data.id);
    page.jobs.delete(data.id);
    scheduleRender();
  } else if (name === "error") setProblem("stream", new ApiError(data.status ?? 0, data));
}

function onStreamState(state, detail) {
  const live = $("live-status");
  page.streamOpen = state === "open";
  if (state === "open") {
    setProblem("stream", null);
    live.textContent = liveText();
  } else if (state === "ended") {
    page.stream = null;
    live.textContent = "Live: every job shown has finished.";
  } else if (state === "retrying") {
    if (detail.error) setProblem("stream", detail.error);
    live.textContent = `Live updates lost; reconnecting in ${Math.ceil(detail.delayMs / 1000)} s.`;
  } else if (state === "failed") {
    // Kept as the current stream, so renders do not retry it: a new key or new jobs will.
    setProblem("stream", detail.error);
    live.textContent = "Live updates stopped.";
  }
}

// -- periodic reads ---------------------------------------------------------

async function loadJobs() {
  try {
    const page_ = await call("GET", "/v1/jobs", { params: [["limit", "50"]] });
    page.jobsLoaded = true;
    setProblem("jobs", null);
    for (const job of page_.items) upsert(job);
  } catch (err) {
    setProblem("jobs", err);
  }
  scheduleRender();
}

async function loadQueues() {
  try {
    page.queues = (await call("GET", "/v1/queues")).queues;
    setProblem("queues", null);
  } catch (err) {
    page.queues = null;
    setProblem("queues", err);
  }
  const body = $("queues-body");
  body.replaceChildren(
    ...(page.queues ?? []).map((q) =>
      el(
        "tr",
        { "data-queue": q.name },
        el("th", { scope: "row" }, q.name),
        el("td", { "data-label": "ready" }, String(q.ready)),
        el("td", { "data-label": "deferred" }, String(q.deferred)),
        el("td", { "data-label": "in progress" }, String(q.in_progress)),
        el("td", { "data-label": "dead" }, String(q.dead)),
        el("td", { "data-label": "latency" }, seconds(q.oldest_ready_age_s)),
      ),
    ),
  );
  $("queues-table").hidden = !page.queues?.length;
  const empty = $("queues-empty");
  empty.hidden = Boolean(page.queues?.length);
  if (!page.queues) empty.textContent = `Queue counts unavailable: ${problemText(page.problems.get("queues"))}`;
  else if (!page.queues.length) empty.textContent = "No queues.";
}

async function loadDead() {
  try {
    page.dead = (await call("GET", "/v1/jobs", { params: [["state", "dead"], ["limit", "50"]] })).items;
    setProblem("dead", null);
  } catch (err) {
    page.dead = null;
    setProblem("dead", err);
  }
  renderDead();
}

function deadRow(job) {
  const open = el("button", { type: "button", class: "link", "aria-label": `${job.job_type} job ${job.id}: details` },
    el("span", {}, job.job_type), " ", el("code", {}, shortId(job.id)));
  open.addEventListener("click", () => openDetail(job.id));
  const requeueButton = el("button", { type: "button", class: "requeue", "aria-label": `Requeue ${job.job_type} job ${job.id}` }, "Requeue");
  const status = el("output", { class: "muted", "aria-live": "polite" });
  requeueButton.addEventListener("click", () => requeue(job.id, status, requeueButton));
  const error = job.error ? `${job.error.type}: ${job.error.message}` : "no error recorded";
  return el(
    "li",
    { class: "dead", "data-job-id": job.id },
    open,
    el("span", { class: "error-text" }, error),
    el("span", { class: "muted" }, `died ${time(job.finished_at)} after ${job.tries} tries`),
    requeueButton,
    status,
  );
}

function renderDead() {
  const list = $("dead-list");
  const focusedId = document.activeElement?.closest?.("#dead-list li")?.dataset.jobId;
  const ids = (page.dead ?? []).map((job) => job.id).join(",");
  if (list.dataset.ids !== ids) {
    list.dataset.ids = ids;
    list.replaceChildren(...(page.dead ?? []).map(deadRow));
    const again = focusedId && list.querySelector(`li[data-job-id="${CSS.escape(focusedId)}"] .requeue`);
    if (again) again.focus();
    else if (focusedId) $("dead-heading").focus();
  }
  const empty = $("dead-empty");
  empty.hidden = Boolean(page.dead?.length);
  if (!page.dead) empty.textContent = `Dead letters unavailable: ${problemText(page.problems.get("dead"))}`;
  else if (!page.dead.length) empty.textContent = "No dead jobs: nothing to requeue.";
}

// -- Redis: its memory policy and how full it is, from /readyz (no key needed) --

async function loadRedis() {
  let body = null;
  try {
    const response = await fetch(apiUrl("/readyz"), { headers: authHeaders(), cache: "no-store" });
    body = await response.json();
  } catch {
    // The api did not answer: the other sections say so.
  }
  renderRedis(body?.redis ?? null, body);
}

function renderRedis(redis, body) {
  const line = $("redis-line");
  line.classList.toggle("problem", Boolean(redis?.evicts));
  if (!redis?.maxmemory_policy) {
    line.textContent = body?.redis_fault ? `Redis: ${body.title} (${body.redis_fault}).` : "";
    return;
  }
  const used = redis.memory_used_ratio == null
    ? "no maxmemory set"
    : `${Math.round(redis.memory_used_ratio * 100)} % of maxmemory used`;
  line.textContent = redis.evicts
    ? `Redis may evict jobs: its maxmemory-policy is ${redis.maxmemory_policy}, not noeviction `
      + `(${redis.eviction_allowed ? "allowed by REDIS_ALLOW_EVICTION" : "the api is not ready"}); ${used}.`
    : `Redis: maxmemory-policy ${redis.maxmemory_policy}; ${used}.`;
}

// -- caught mail: what make run's mail catcher received (development only) ---

async function loadMail() {
  try {
    page.mail = (await call("GET", "/v1/dev/mail")).items;
    setProblem("mail", null);
  } catch (err) {
    page.mail = null;
    setProblem("mail", err);
  }
  renderMail();
}

function mailRow(mail) {
  const body = el("details", {}, el("summary", {}, "Body"), el("pre", { class: "mail-body" }, mail.body));
  return el(
    "li",
    { class: "mail", "data-message-id": mail.message_id },
    el("strong", { class: "mail-subject" }, mail.subject || "(no subject)"),
    el("span", { class: "mail-to" }, `to ${mail.to.join(", ")}`),
    el("span", { class: "muted" }, time(mail.received_at)),
    body,
  );
}

function renderMail() {
  const list = $("mail-list");
  const ids = (page.mail ?? []).map((mail) => mail.message_id).join(",");
  if (list.dataset.ids !== ids) {
    list.dataset.ids = ids;
    list.replaceChildren(...(page.mail ?? []).map(mailRow));
  }
  const empty = $("mail-empty");
  empty.hidden = Boolean(page.mail?.length);
  if (!page.mail) empty.textContent = `Caught mail unavailable: ${problemText(page.problems.get("mail"))}`;
  else if (!page.mail.length) empty.textContent = "No mail caught yet. Upload a document to get its summary by mail.";
}

let ticks = 0;
async function refresh() {
  await Promise.all([
    loadQueues(),
    loadDead(),
    loadRedis(),
    page.config.caught_mail ? loadMail() : null,
    ticks % LIST_EVERY === 0 ? loadJobs() : null,
  ]);
  ticks += 1;
  setTimeout(refresh, page.config.refresh_s * 1000);
}

// -- actions ----------------------------------------------------------------

async function requeue(id, statusEl, button) {
  if (button) button.disabled = true;
  try {
    const job = await call("POST", `/v1/jobs/${encodeURIComponent(id)}/retry`);
    upsert(job);
    statusEl.textContent = `Requeued job ${shortId(id)}.`;
    page.dead = (page.dead ?? []).filter((dead) => dead.id !== id);
    renderDead();
    loadQueues();
  } catch (err) {
    statusEl.textContent = problemText(err);
    if (err.needsKey) setProblem("action", err);
    if (button) button.disabled = false;
  }
}

async function cancel(id, statusEl) {
  try {
    upsert(await call("DELETE", `/v1/jobs/${encodeURIComponent(id)}`));
    statusEl.textContent = "Cancelled.";
  } catch (err) {
    statusEl.textContent = problemText(err);
  }
}

async function submitTasks(event) {
  event.preventDefault();
  const count = Number.parseInt($("count-input").value, 10);
  const status = $("submit-status");
  const button = $("submit-button");
  button.disabled = true;
  status.textContent = "Submitting…";
  try {
    const answer = await call("POST", "/task", { body: { count } });
    // The job type shows once the job is read; POST /task names none.
    for (const id of answer.job_ids) upsert(placeholder(id, "task"));
    status.textContent = `Queued ${answer.queued} task(s).`;
    setProblem("action", null);
    loadQueues();
  } catch (err) {
    status.textContent = problemText(err);
    if (err.needsKey) setProblem("action", err);
  } finally {
    button.disabled = false;
  }
}

// -- the detail view --------------------------------------------------------

async function openDetail(id) {
  page.detailId = id;
  $("detail-status").textContent = "";
  $("detail-problem").hidden = true;
  if (location.hash !== `#job=${id}`) history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
  const dialog = $("job-dialog");
  if (!dialog.open) dialog.showModal();
  renderDetail();
  describeWorkflow(id);
  try {
    upsert(await call("GET", `/v1/jobs/${encodeURIComponent(id)}`));
  } catch (err) {
    $("detail-problem").hidden = false;
    $("detail-problem").textContent = problemText(err);
  }
}

function field(name, value) {
  return [el("dt", {}, name), el("dd", { "data-field": name }, value ?? "—")];
}

function renderDetail() {
  const job = page.jobs.get(page.detailId);
  if (!page.detailId) return;
  $("detail-heading").textContent = job ? `${job.job_type} ${shortId(job.id)}` : `Job ${shortId(page.detailId)}`;
  const full = Boolean(job && job.version);
  $("detail-fields").replaceChildren(
    ...(full
      ? [
          ...field("state", stateLabel(job.state)),
          ...field("progress", `${job.state === "complete" ? 100 : job.progress.percent}% ${job.progress.message}`),
          ...field("id", el("code", {}, job.id)),
          ...field("queue", job.queue),
          ...field("tries", `${job.tries} of ${job.max_tries}${job.requeues ? `, requeued ${job.requeues}×` : ""}`),
          ...field("enqueued", time(job.enqueued_at)),
          ...field("scheduled", time(job.scheduled_at)),
          ...field("started", time(job.started_at)),
          ...field("finished", time(job.finished_at)),
          ...field("next try", time(job.next_try_at)),
          ...field("queue wait", seconds(secondsBetween(job.scheduled_at, job.started_at))),
          ...field("run time", seconds(secondsBetween(job.started_at, job.finished_at))),
          ...field("trace id", job.trace_id ? el("code", {}, job.trace_id) : null),
          ...field("request id", job.request_id ? el("code", {}, job.request_id) : null),
          ...field("parent", job.parent_id ? el("a", { href: `#job=${job.parent_id}` }, shortId(job.parent_id)) : null),
          ...field("children", (job.children ?? []).length
            ? el("span", {}, ...job.children.map((c) => el("a", { href: `#job=${c}`, class: "child" }, shortId(c), " ")))
            : null),
        ]
      : field("state", "loading…")),
  );
  $("detail-payload").textContent = full ? pretty(masked(job.payload, page.config.redact_keys)) : "";
  $("detail-result-box").hidden = !full || job.state !== "complete";
  $("detail-result").textContent = full ? pretty(job.result) : "";
  const tries = full ? job.attempts ?? [] : [];
  $("detail-tries-box").hidden = tries.length === 0;
  $("detail-tries").replaceChildren(
    ...tries.map((t) => el("li", { "data-outcome": t.outcome },
      `try ${t.number}: ${t.outcome}, started ${time(t.started_at)}, ran ${seconds(t.duration_s)}`)),
  );
  $("detail-error-box").hidden = !full || !job.error;
  $("detail-error").textContent = full && job.error
    ? `${job.error.type}: ${job.error.message}\n\n${job.error.traceback}`.trim()
    : "";
  $("detail-requeue").hidden = !full || job.state !== "dead";
  $("detail-cancel").hidden = !full || TERMINAL_STATES.has(job.state);
}

function closeDetail() {
  page.detailId = null;
  if (location.hash.startsWith("#job=")) history.replaceState(null, "", location.pathname + location.search);
}

function openFromHash() {
  const match = /^#job=(.+)$/.exec(location.hash);
  if (match) openDetail(decodeURIComponent(match[1]));
}

// -- the key ----------------------------------------------------------------

function showKeyStatus() {
  $("key-status").textContent = apiKey() ? "A key is set (this tab only)." : "No key set.";
}

function useKey(key) {
  setApiKey(key);
  $("key-input").value = "";
  showKeyStatus();
  for (const source of [...page.problems.keys()]) setProblem(source, null);
  loadQueues();
  loadDead();
  loadJobs();
  restartStream();
}

// -- start ------------------------------------------------------------------

async function loadConfig() {
  try {
    const response = await fetch(new URL("config.json", document.baseURI), { cache: "no-store" });
    if (response.ok) page.config = await response.json();
  } catch {
    // The defaults above will do; the api calls report what is wrong.
  }
}

function start() {
  showKeyStatus();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useKey($("key-input").value.trim());
  });
  $("key-forget").addEventListener("click", () => useKey(""));
  $("submit-form").addEventListener("submit", submitTasks);
  $("jobs-refresh").addEventListener("click", loadJobs);
  $("detail-close").addEventListener("click", () => $("job-dialog").close());
  $("job-dialog").addEventListener("close", closeDetail);
  $("detail-requeue").addEventListener("click", () => requeue(page.detailId, $("detail-status")));
  $("detail-cancel").addEventListener("click", () => cancel(page.detailId, $("detail-status")));
  window.addEventListener("hashchange", openFromHash);
  loadConfig().then(() => {
    // The form posts to the seed app's POST /task: hidden when no job module mounts it.
    $("submit-form").closest("section").hidden = !page.config.submit_tasks;
    $("mail").hidden = !page.config.caught_mail;
    refresh();
    openFromHash();
  });
}

start();
