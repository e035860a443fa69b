// A workflow on the status page: the groups around a job (or a group) as a
// tree, from GET /v1/workflows/{id}: each group's counts and a page of its
// members, its continuations, the groups its jobs started (nested groups,
// hand-overs, chains), each node's state, live; and the group's actions
// (cancel, requeue) for keys that may act. Opened by `#workflow=ID`.

import { ApiError, apiUrl, authHeaders, call } from "./api.js";
import { $, el } from "./dom.js";
import { TERMINAL_STATES, shortId, stateLabel } from "./format.js";
import { EventStream } from "./sse.js";

// Members shown per page of the top group (nested groups show the api's smaller page).
const PAGE = 20;
// While anything in the tree still runs, it is read again this often (nested
// groups have no stream of their own here); the top group's stream wakes it sooner.
const POLL_S = 3;
// A burst of the stream's events costs one read.
const COALESCE_MS = 200;
const SVG = "http://www.w3.org/2000/svg";
const COUNTS = ["complete", "dead", "cancelled", "pending"];

const view = {
  focus: null,
  offset: null, // the top group's page; null: the one that holds the focus
  tree: null,
  stream: null,
  streamGroup: null,
  timer: null,
  loading: false,
  again: false,
  confirming: null, // the group id whose cancel awaits its confirmation
};

function problemText(err) {
  if (!(err instanceof ApiError)) return String(err);
  if (err.needsKey) return `${err.status}: this key may not do that; enter another key above.`;
  return `${err.problem.title ?? "Error"}${err.status ? ` (${err.status})` : ""}: ${err.problem.detail ?? ""}`;
}

function readOnly() {
  return document.body.dataset.readonly !== "false";
}

// -- what a node says -----------------------------------------------------------

/** A job's state; a continuation without a record by what its group will do. */
export function jobStateText(job, group) {
  if (job.state) {
    const percent = job.state === "in_progress" && job.percent ? ` ${job.percent}%` : "";
    return `${stateLabel(job.state)}${percent}`;
  }
  if (!group || !job.when) return "expired";
  if (group.state === "failed" || group.state === "cancelled") return `will not run (group ${group.state})`;
  if (group.state === "done") return job.when === "success" ? "not run (a member failed)" : "expired";
  return "waits for the members";
}

function countsText(group) {
  const c = group.counts;
  return `${group.total} member(s): ${c.complete} complete, ${c.pending} pending, ${c.dead} dead, ${c.cancelled} cancelled`;
}

/** The counts as one bar (drawn, so it reads at a glance; the text beside it says the same). */
function countsBar(group) {
  const width = 240, height = 10;
  const root = document.createElementNS(SVG, "svg");
  const attrs = { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "wf-bar", "aria-hidden": "true" };
  for (const [name, value] of Object.entries(attrs)) {
    root.setAttribute(name, value);
  }
  let x = 0;
  const ends = group.total + Object.keys(group.handed ?? {}).length;
  for (const name of COUNTS) {
    const share = ends ? (group.counts[name] * width) / ends : 0;
    if (share <= 0) continue;
    const rect = document.createElementNS(SVG, "rect");
    for (const [attr, value] of Object.entries({ x: x.toFixed(1), y: "0", width: share.toFixed(1), height: String(height), class: name, "data-count": name })) {
      rect.setAttribute(attr, value);
    }
    root.append(rect);
    x += share;
  }
  return root;
}

// -- drawing the tree -----------------------------------------------------------

function jobNode(job, group, focus, label = null) {
  label ??= job.index !== null && job.index !== undefined
    ? `#${job.index}`
    : job.id.endsWith(".then") ? "then" : "on success";
  const state = jobStateText(job, group);
  // In a group's box a job's id is its place there (`.3`, `.then`); the box shows the group's.
  const place = group && job.id.startsWith(`${group.id}.`) ? job.id.slice(group.id.length) : shortId(job.id);
  const link = el("a", { href: `#job=${job.id}`, "data-key": `job:${job.id}`, "aria-label": `${label} ${job.job_type ?? "job"} ${job.id}: ${state}` },
    el("span", { class: "wf-label" }, label), " ", job.job_type ?? "?", " ", el("code", { title: job.id }, place));
  const node = el("li", {
    class: `wf-job${job.id === focus ? " wf-focus" : ""}`,
    "data-job-id": job.id,
    "data-state": job.state ?? "none",
    "aria-current": job.id === focus ? "true" : null,
  }, link, " ", el("span", { class: "state" }, state));
  if (job.error) node.append(" ", el("span", { class: "wf-error" }, job.error));
  if (job.groups?.length) {
    node.append(el("div", { class: "wf-nested" }, ...job.groups.map((g) => groupNode(g, focus, false))));
  }
  if (job.more_groups) node.append(el("p", { class: "muted" }, `… and ${job.more_groups} more group(s)`));
  return node;
}

function groupActions(group) {
  const actions = el("div", { class: "wf-actions admin-only" });
  const disabled = readOnly() ? "disabled" : null;
  if (group.state === "running") {
    const confirming = view.confirming === group.id;
    const cancel = el("button", { type: "button", class: "wf-cancel", "data-key": `cancel:${group.id}`, disabled },
      confirming ? `Confirm: cancel the whole ${group.kind}` : `Cancel ${group.kind}…`);
    cancel.addEventListener("click", () => {
      if (view.confirming !== group.id) {
        view.confirming = group.id;
        render();
        return;
      }
      view.confirming = null;
      act(group, "cancel");
    });
    actions.append(cancel);
  }
  if (group.counts.dead > 0 || group.state === "failed") {
    const requeue = el("button", { type: "button", class: "wf-requeue", "data-key": `requeue:${group.id}`, disabled },
      `Requeue its dead jobs`);
    requeue.addEventListener("click", () => act(group, "requeue"));
    actions.append(requeue);
  }
  return actions;
}

function pager(group) {
  const first = group.offset + 1;
  const last = group.offset + group.members.length;
  const nav = el("nav", { class: "wf-pager", "aria-label": `members of ${group.id}` },
    el("span", {}, group.members.length ? `Members ${first}–${last} of ${group.total}` : `${group.total} member(s)`));
  const previous = el("button", { type: "button", class: "wf-previous", "data-key": "previous", disabled: group.offset === 0 ? "disabled" : null }, "Previous");
  const next = el("button", { type: "button", class: "wf-next", "data-key": "next", disabled: group.next_offset === null ? "disabled" : null }, "Next");
  previous.addEventListener("click", () => page(Math.max(0, group.offset - PAGE)));
  next.addEventListener("click", () => page(group.next_offset));
  nav.append(" ", previous, " ", next);
  return nav;
}

function groupNode(group, focus, top) {
  const node = el("section", {
    class: `wf-group${group.id === focus ? " wf-focus" : ""}`,
    "data-group-id": group.id,
    "data-state": group.state,
    "aria-label": `${group.kind} ${group.id}: ${group.state}, ${countsText(group)}`,
  });
  node.append(el("p", { class: "wf-head" },
    el("strong", {}, group.kind), " ", el("code", { title: group.id }, shortId(group.id)), " ",
    el("span", { class: "state" }, group.state), " ",
    el("span", { class: "muted" }, `· on a child's failure: ${group.on_child_failure}`)));
  node.append(el("p", { class: "wf-counts" }, countsBar(group), " ", el("span", { class: "wf-counts-text" }, countsText(group))));
  if (group.failed) {
    const why = group.failed.message ? `: ${group.failed.error_type}: ${group.failed.message}` : "";
    node.append(el("p", { class: "problem wf-failed" }, "Failed by ",
      el("a", { href: `#job=${group.failed.member_id}` }, shortId(group.failed.member_id)), ` (${group.failed.state})${why}`));
  }
  if (group.truncated) {
    node.append(el("p", { class: "muted" }, "Past the tree's bounds: ",
      el("a", { href: `#workflow=${group.id}` }, "open this group"), " to see its members."));
    return node;
  }
  node.append(groupActions(group));
  if (top && (group.offset > 0 || group.next_offset !== null)) node.append(pager(group));
  // role="list": a list styled without markers keeps its semantics in every browser.
  node.append(el("ol", { class: "wf-members", role: "list", start: String(group.offset + 1) },
    ...group.members.map((m) => jobNode(m, group, focus))));
  if (!top && group.next_offset !== null) {
    node.append(el("p", { class: "muted" }, `… ${group.total - group.members.length} more: `,
      el("a", { href: `#workflow=${group.id}` }, "open this group")));
  }
  if (group.continuation_jobs.length) {
    node.append(el("ul", { class: "wf-then", "aria-label": "continuations" },
      ...group.continuation_jobs.map((c) => jobNode(c, group, focus))));
  }
  return node;
}

function render() {
  const tree = view.tree;
  if (!tree) return;
  // Keep the focus on the same control across a redraw (a live update must not steal it).
  const key = document.activeElement?.closest?.("#workflow-tree [data-key]")?.dataset.key;
  const parts = [];
  if (tree.root) {
    parts.push(el("ul", { class: "wf-root" }, jobNode(tree.root, null, tree.focus, "started by")));
  }
  parts.push(...tree.groups.map((g) => groupNode(g, tree.focus, true)));
  if (!tree.groups.length) parts.push(el("p", { class: "empty" }, "This job started no group and is in none."));
  if (tree.truncated) parts.push(el("p", { class: "muted" }, "The tree is bounded: some groups show counts only."));
  $("workflow-tree").replaceChildren(...parts);
  if (key) $("workflow-tree").querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
}

// -- reading it, live -------------------------------------------------------------

function unfinished(tree) {
  const jobs = (group) => [...group.members, ...group.continuation_jobs];
  const open = (job, group) => (job.state ? !TERMINAL_STATES.has(job.state) : group?.state === "running")
    || (job.groups ?? []).some(running);
  const running = (group) => group.state === "running" || jobs(group).some((j) => open(j, group));
  return (tree.root && open(tree.root, null)) || tree.groups.some(running);
}

async function load() {
  if (!view.focus) return;
  if (view.loading) {
    view.again = true;
    return;
  }
  view.loading = true;
  clearTimeout(view.timer);
  const focus = view.focus;
  try {
    // No offset at first: the api shows the page that holds the focus.
    const params = [["limit", String(PAGE)], ...(view.offset === null ? [] : [["offset", String(view.offset)]])];
    const tree = await call("GET", `/v1/workflows/${encodeURIComponent(focus)}`, { params });
    if (focus !== view.focus) return;
    view.tree = tree;
    view.offset = tree.groups[0]?.offset ?? 0;
    $("workflow-problem").hidden = true;
    $("workflow-heading").textContent = `Workflow around ${shortId(focus)}`;
    render();
    live();
  } catch (err) {
    $("workflow-problem").hidden = false;
    $("workflow-problem").textContent = problemText(err);
    view.timer = setTimeout(load, POLL_S * 1000);
  } finally {
    view.loading = false;
    if (view.again) {
      view.again = false;
      load();
    }
  }
}

let coalesce = null;
function soon() {
  clearTimeout(coalesce);
  coalesce = setTimeout(load, COALESCE_MS);
}

/** The top group's stream while it runs, and a slower read while anything else does. */
function live() {
  const top = view.tree.groups[0];
  const stillRunning = unfinished(view.tree);
  const streamFor = top && top.state === "running" ? top.id : null;
  if (view.streamGroup !== streamFor) {
    view.stream?.close();
    view.stream = null;
    view.streamGroup = streamFor;
    if (streamFor) {
      view.stream = new EventStream(apiUrl(`/v1/groups/${streamFor}/events`), {
        headers: authHeaders,
        onEvent: (name) => { if (name === "group") soon(); },
        onState: (state) => { if (state === "ended") soon(); },
        finalEvents: [],
      }).start();
    }
  }
  $("workflow-live").textContent = stillRunning ? "Live: updates as its jobs end." : "Finished: nothing left to run.";
  $("workflow").dataset.live = String(stillRunning);
  if (stillRunning) view.timer = setTimeout(load, POLL_S * 1000);
}

function page(offset) {
  view.offset = offset;
  load();
}

async function act(group, action) {
  try {
    const answer = await call("POST", `/v1/groups/${group.id}/${action}`);
    const done = action === "cancel" ? "Cancelled" : "Requeued";
    $("workflow-status").textContent = `${done} ${answer.done} job(s) of ${group.kind} ${shortId(group.id)}.`;
  } catch (err) {
    $("workflow-status").textContent = problemText(err);
  }
  load();
}

// -- opening and closing ----------------------------------------------------------

export function openWorkflow(focus) {
  if (view.focus !== focus) {
    view.offset = null;
    view.tree = null;
    view.confirming = null;
    $("workflow-tree").replaceChildren(el("p", { class: "empty" }, "Loading…"));
    $("workflow-status").textContent = "";
  }
  view.focus = focus;
  const dialog = $("job-dialog");
  if (dialog.open) dialog.close();
  $("workflow").hidden = false;
  $("workflow-heading").focus();
  $("workflow").scrollIntoView({ block: "start" });
  load();
}

function closeWorkflow() {
  view.focus = null;
  view.tree = null;
  clearTimeout(view.timer);
  view.stream?.close();
  view.stream = null;
  view.streamGroup = null;
  $("workflow").hidden = true;
  if (location.hash.startsWith("#workflow=")) history.replaceState(null, "", location.pathname + location.search);
}

/** In a job's detail view: a link to its workflow, when it is in (or started) a group. */
export async function describeWorkflow(jobId) {
  const box = $("detail-workflow");
  box.hidden = true;
  box.dataset.for = jobId;
  let tree;
  try {
    tree = await call("GET", `/v1/workflows/${encodeURIComponent(jobId)}`, { params: [["limit", "0"]] });
  } catch {
    return; // the detail view says what is wrong with the job itself
  }
  if (box.dataset.for !== jobId || !tree.groups.length) return;
  const top = tree.groups[0];
  $("detail-workflow-link").href = `#workflow=${jobId}`;
  $("detail-workflow-text").textContent = `${top.kind} ${shortId(top.id)}: ${top.state}, ${countsText(top)}`;
  box.hidden = false;
}

function fromHash() {
  const match = /^#workflow=(.+)$/.exec(location.hash);
  if (match) openWorkflow(decodeURIComponent(match[1]));
}

function init() {
  $("workflow-close").addEventListener("click", closeWorkflow);
  window.addEventListener("hashchange", fromHash);
  // A new key may see more (or less): read again with it.
  $("key-form").addEventListener("submit", () => setTimeout(() => view.focus && load(), 0));
  // Whether the key may act is known once the console asked: draw the actions again then.
  new MutationObserver(render).observe(document.body, { attributes: true, attributeFilter: ["data-readonly"] });
  fromHash();
}

init();
