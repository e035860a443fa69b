// The operator's console: find jobs by filter, act on every match (preview,
// then confirm), pause and resume queues with their limits and history
// charts (SVG drawn here, no library), the live workers and the audit log.
// A read-only key (no jobs:admin) sees everything and no controls.

import { ApiError, call } from "./api.js";
import { $, el } from "./dom.js";
import { shortId, stateLabel, time } from "./format.js";

const REFRESH_S = 3;
const HISTORY_MINUTES = 60;
const SERIES = ["enqueued", "complete", "retrying", "dead"];
const SVG = "http://www.w3.org/2000/svg";

const state = { admin: false, filter: {}, cursor: null, preview: null, bulkId: null };

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function problem(err) {
  return err instanceof ApiError ? `${err.status || ""} ${err.message}`.trim() : String(err);
}

// -- who is calling ------------------------------------------------------------

async function whoami() {
  try {
    const me = await call("GET", "/v1/whoami");
    state.admin = me.scopes.includes("jobs:admin");
    $("whoami").textContent = `key ${me.name}: ${state.admin ? "may act" : "read-only"}`;
  } catch {
    state.admin = false;
    $("whoami").textContent = "";
  }
  document.body.dataset.readonly = String(!state.admin);
  for (const node of document.querySelectorAll(".admin-only button, button.admin-only")) {
    node.disabled = !state.admin;
  }
}

// -- finding jobs --------------------------------------------------------------

function readFilter() {
  const form = new FormData($("find-form"));
  const filter = {};
  for (const [name, value] of form.entries()) {
    if (!value) continue;
    filter[name] = name === "since" ? new Date(value).toISOString() : value;
  }
  return filter;
}

function listParams(filter, cursor) {
  const params = [["limit", "50"]];
  for (const [name, value] of Object.entries(filter)) params.push([name === "text" ? "q" : name, value]);
  if (cursor) params.push(["cursor", cursor]);
  return params;
}

async function find(more = false) {
  if (!more) {
    state.filter = readFilter();
    state.cursor = null;
    $("found-list").replaceChildren();
    resetBulk();
  }
  try {
    const page = await call("GET", "/v1/jobs", { params: listParams(state.filter, state.cursor) });
    for (const job of page.items) {
      const error = job.error ? ` ${job.error.type}: ${job.error.message}` : "";
      $("found-list").append(
        el("li", { "data-job-id": job.id, "data-state": job.state },
          el("a", { href: `#job=${job.id}` }, shortId(job.id)),
          ` ${job.job_type} `, el("span", { class: "state" }, stateLabel(job.state)), error),
      );
    }
    state.cursor = page.next_cursor;
    $("found-more").hidden = !state.cursor;
    const shown = $("found-list").children.length;
    $("found-empty").textContent = shown ? `${shown} shown${state.cursor ? ", more to load" : ""}.` : "No job matches.";
  } catch (err) {
    $("found-empty").textContent = problem(err);
  }
}

// -- bulk actions --------------------------------------------------------------

function resetBulk() {
  state.preview = null;
  $("bulk-count").textContent = "";
  $("bulk-confirm").hidden = true;
}

async function preview(event) {
  event.preventDefault();
  state.filter = readFilter();
  try {
    const { count, exact } = await call("POST", "/v1/bulk/preview", { body: state.filter });
    const action = $("bulk-action").value;
    state.preview = { action, filter: state.filter, count };
    // Past its budget a preview counts a lower bound.
    $("bulk-count").textContent = exact ? `${count} job(s) match.` : `At least ${count} job(s) match.`;
    $("bulk-confirm").textContent = `Confirm: ${action} ${count} job(s)`;
    $("bulk-confirm").hidden = count === 0;
  } catch (err) {
    $("bulk-count").textContent = problem(err);
  }
}

async function confirmBulk() {
  const { action, filter, count } = state.preview;
  $("bulk-confirm").hidden = true;
  // Deleting every job says so, and deletes at most the jobs the preview counted.
  const everything = action === "delete" && Object.keys(filter).length === 0;
  const body = { action, filter, ...(everything ? { all: true, count } : {}) };
  try {
    const started = await call("POST", "/v1/bulk", { body });
    state.bulkId = started.id;
    await followBulk();
  } catch (err) {
    $("bulk-status").textContent = problem(err);
  }
}

async function followBulk() {
  const status = await call("GET", `/v1/bulk/${state.bulkId}`);
  $("bulk-status").dataset.state = status.state;
  $("bulk-status").textContent =
    `${status.action}: ${status.done} done, ${status.skipped} skipped, ${status.state}`;
  if (status.state === "running") setTimeout(followBulk, 300);
  else refreshSides();
}

// -- queues, history, workers, audit -------------------------------------------

function chart(minutes) {
  const width = 600, height = 120, pad = 4;
  const max = Math.max(1, ...minutes.flatMap((m) => SERIES.map((s) => m.counts[s])));
  const x = (i) => pad + (i * (width - 2 * pad)) / Math.max(1, minutes.length - 1);
  const y = (v) => height - pad - (v * (height - 2 * pad)) / max;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": `jobs per minute, last ${minutes.length} minutes, peak ${max}` });
  for (const series of SERIES) {
    const points = minutes.map((m, i) => `${x(i).toFixed(1)},${y(m.counts[series]).toFixed(1)}`);
    const total = minutes.reduce((sum, m) => sum + m.counts[series], 0);
    const line = svg("polyline", { points: points.join(" "), class: series, "data-series": series,
      "data-total": String(total) });
    root.append(line);
  }
  return root;
}

async function queueControls() {
  const { queues } = await call("GET", "/v1/queues");
  const blocks = await Promise.all(queues.map(async (queue) => {
    const history = await call("GET", `/v1/queues/${encodeURIComponent(queue.name)}/history`,
      { params: [["minutes", String(HISTORY_MINUTES)]] });
    const button = el("button", { type: "button", class: "admin-only queue-toggle",
      "data-queue": queue.name }, queue.paused ? "Resume" : "Pause");
    button.disabled = !state.admin;
    button.addEventListener("click", () => toggle(queue));
    const limits = Object.entries(queue.limits ?? {}).map(([type, lim]) =>
      el("li", {}, `${type}: ${Object.entries(lim).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")}`));
    const waits = history.minutes.map((m) => m.mean_wait_s).filter((w) => w !== null);
    const latency = waits.length ? `${waits[waits.length - 1]} s` : "—";
    return el("div", { class: "queue-control", "data-queue": queue.name, "data-paused": String(queue.paused) },
      el("div", {},
        el("strong", {}, queue.name), " ",
        el("span", { class: "paused-state" }, queue.paused ? "paused" : "running"), " ", button,
        el("ul", { class: "limits" }, ...limits),
        el("p", { class: "muted" }, `queue latency (last minute with starts): ${latency}`)),
      el("figure", {},
        chart(history.minutes),
        el("figcaption", { class: "legend" }, ...SERIES.map((s) => el("span", { "data-series": s }, s)))));
  }));
  $("queue-controls").replaceChildren(...blocks);
}

async function toggle(queue) {
  try {
    await call("POST", `/v1/queues/${encodeURIComponent(queue.name)}/${queue.paused ? "resume" : "pause"}`);
  } catch (err) {
    $("queue-controls").prepend(el("p", { class: "problem" }, problem(err)));
  }
  await refreshSides();
}

async function workers() {
  const list = (await call("GET", "/v1/workers")).workers;
  $("workers-list").replaceChildren(...list.map((w) => el("li", { "data-worker": w.name },
    `${w.name} (${w.queue}, ${w.running.length}/${w.concurrency} running, v${w.version || "?"}, seen ${time(w.last_seen)})`,
    ...w.running.map((id) => el("a", { href: `#job=${id}`, class: "running-job" }, ` ${shortId(id)}`)))));
  $("workers-empty").textContent = list.length ? "" : "No live workers.";
}

async function audit() {
  const { items } = await call("GET", "/v1/audit", { params: [["limit", "20"]] });
  $("audit-list").replaceChildren(...items.map((e) =>
    el("li", { "data-action": e.action }, `${time(e.at)} ${e.who} ${e.action} ${e.target} (${e.count})`)));
  $("audit-empty").textContent = items.length ? "" : "Nothing done yet.";
}

async function refreshSides() {
  await Promise.allSettled([queueControls(), workers(), audit()]);
}

async function loop() {
  await refreshSides();
  setTimeout(loop, REFRESH_S * 1000);
}

function init() {
  $("find-form").addEventListener("submit", (event) => {
    event.preventDefault();
    find();
  });
  $("found-more").addEventListener("click", () => find(true));
  $("bulk-form").addEventListener("submit", preview);
  $("bulk-confirm").addEventListener("click", confirmBulk);
  $("key-form").addEventListener("submit", () => setTimeout(whoami, 0));
  whoami().then(loop);
}

init();
