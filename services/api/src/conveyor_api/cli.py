"""`conveyor`: the operator's command line, a client of the api.

    conveyor jobs list [--state S] [--job-type T] [--queue Q] [--error-type E]
                       [--search TEXT] [--since 1h] [--until ...] [--limit N] [--all]
    conveyor jobs show ID
    conveyor jobs cancel ID | requeue ID [--start-over]
    conveyor jobs tree ID [--offset N] [--limit N] [--all]
    conveyor groups show ID [--offset N] [--limit N] [--all]
    conveyor groups cancel ID | requeue ID
    conveyor dead requeue [--job-type T] [--queue Q] [--since 1h] [--yes]
    conveyor bulk cancel|requeue|delete [filters] [--yes]
    conveyor queues [pause NAME | resume NAME]
    conveyor workers
    conveyor audit

The api's address comes from `--url` or CONVEYOR_URL (default
http://localhost:8000), the key from CONVEYOR_API_KEY or `--key-file PATH`
(`-`: standard input), never from the command line, where every user of the
machine can read it (`ps`, shell history). Output is a table, or JSON with
`--json`; whatever the api sends is printed without its control characters
(terminal escape sequences among them), so a job's error message cannot
rewrite the operator's screen. Exit codes, for scripts: 0 done, 1 the api
refused or failed (4xx/5xx other than below), 2 bad usage, 3 the key is
missing, wrong or lacks the scope (401/403), 4 not found (404), 5 conflict
(409: e.g. the job is not dead), 6 the api or Redis is unavailable.
"""

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_UNAVAILABLE = 6
# How often a bulk action's progress is polled.
POLL_S = 0.5
DEFAULT_URL = "http://localhost:8000"
KEY_ENV = "CONVEYOR_API_KEY"
# Terminal escape sequences: CSI (`ESC [ ... final`), OSC and other strings
# (`ESC ] ... BEL or ESC \`), and the two-byte ones (`ESC` + one character).
ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -~]?"
)
# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional
# overrides and isolates (which reorder what follows them on screen).
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` without terminal escape sequences and control characters (tab and
    newline kept): what the api sends is data, never commands to the terminal."""
    return CONTROL_CHARACTER.sub("", ESCAPE_SEQUENCE.sub("", text))


def say(text: str = "", *, end: str = "\n", err: bool = False) -> None:
    """Print, made printable: the only way this command writes to the terminal."""
    print(printable(text), end=end, file=sys.stderr if err else sys.stdout)


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _exit_code(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if status in (502, 503, 504):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


class Api:
    def __init__(
        self,
        url: str,
        key: str,
        timeout_s: float = 30,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=url,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {key}"},
            transport=transport,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the api: {exc}", EXIT_UNAVAILABLE) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail") or response.text
            except ValueError:
                detail = response.text
            raise CliError(
                f"{method} {path}: {response.status_code} {detail}",
                _exit_code(response.status_code),
            )
        return response.json() if response.content else None


def parse_time(text: str) -> str:
    """`1h`, `30m`, `2d`, `45s` ago, or an ISO 8601 time (UTC if no offset)."""
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip()):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return (datetime.now(UTC) - timedelta(**{unit: float(m[1])})).isoformat()
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (30m, 1h, 2d) or an ISO 8601 time"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def _filters(parser: argparse.ArgumentParser, *, state: bool = True) -> None:
    if state:
        parser.add_argument("--state")
    parser.add_argument("--job-type")
    parser.add_argument("--queue")
    parser.add_argument("--error-type")
    parser.add_argument("--search", help="part of the job id or error message")
    parser.add_argument("--since", type=parse_time, help="30m, 1h, 2d or an ISO time")
    parser.add_argument("--until", type=parse_time)


def _filter_of(args: argparse.Namespace, **fixed: str) -> dict[str, Any]:
    found = {
        "state": getattr(args, "state", None),
        "job_type": args.job_type,
        "queue": args.queue,
        "error_type": args.error_type,
        "text": args.search,
        "since": args.since,
        "until": args.until,
        **fixed,
    }
    return {k: v for k, v in found.items() if v is not None}


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    """One table cell: one line, whatever the value holds."""
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return " ".join(printable(str(value)).split())


def _out(
    args: argparse.Namespace, data: Any, rows: list[dict[str, Any]], cols: Sequence[str]
) -> None:
    if args.json:
        say(json.dumps(data, indent=2))  # ASCII: every control character escaped
    else:
        say(table(rows, cols) if rows else "(none)")


JOB_COLUMNS = ("id", "job_type", "queue", "state", "tries", "error", "enqueued_at", "finished_at")


def _job_row(job: dict[str, Any]) -> dict[str, Any]:
    error = job.get("error")
    return {**job, "error": f"{error['type']}: {error['message']}"[:60] if error else None}


def cmd_jobs_list(api: Api, args: argparse.Namespace) -> int:
    params = {k: v for k, v in _filter_of(args).items() if k != "text"}
    if args.search:
        params["q"] = args.search
    params["limit"] = args.limit
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = api.call(
            "GET", "/v1/jobs", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor or (not args.all and len(items) >= args.limit):
            break
    items = items if args.all else items[: args.limit]
    _out(args, items, [_job_row(j) for j in items], JOB_COLUMNS)
    return EXIT_OK


def cmd_jobs_show(api: Api, args: argparse.Namespace) -> int:
    job = api.call("GET", f"/v1/jobs/{_segment(args.id)}")
    if args.json:
        say(json.dumps(job, indent=2))
        return EXIT_OK
    for name in ("id", "job_type", "queue", "state", "priority", "tries", "max_tries",
                 "requeues", "enqueued_at", "started_at", "finished_at", "next_try_at",
                 "trace_id", "parent_id", "children", "progress", "payload", "result"):  # fmt: skip
        say(f"{name:>12}: {_cell(job.get(name))}")
    if job.get("error"):
        say(f"{'error':>12}: {job['error']['type']}: {job['error']['message']}")
        if job["error"].get("traceback"):
            say(job["error"]["traceback"])
    if job.get("attempts"):
        say(table(job["attempts"], ("number", "started_at", "duration_s", "outcome")))
    return EXIT_OK


def cmd_jobs_cancel(api: Api, args: argparse.Namespace) -> int:
    job = api.call("DELETE", f"/v1/jobs/{_segment(args.id)}")
    _out(args, job, [_job_row(job)], JOB_COLUMNS)
    return EXIT_OK


def cmd_jobs_requeue(api: Api, args: argparse.Namespace) -> int:
    params = {"start_over": "true"} if args.start_over else None
    job = api.call("POST", f"/v1/jobs/{_segment(args.id)}/retry", params=params)
    _out(args, job, [_job_row(job)], JOB_COLUMNS)
    return EXIT_OK


# A workflow's top group is read this many members per call with --all.
TREE_PAGE_MAX = 100


def _workflow(api: Api, args: argparse.Namespace) -> dict[str, Any]:
    """The workflow around args.id; with --all, every member of its top group
    (a page per call), else the page at --offset."""
    limit = TREE_PAGE_MAX if args.all else args.limit
    # Without --offset the api shows the page that holds the id asked for; --all starts at 0.
    offset = 0 if args.all and args.offset is None else args.offset
    params = {"limit": limit} | ({"offset": offset} if offset is not None else {})
    tree: dict[str, Any] = api.call("GET", f"/v1/workflows/{args.id}", params=params)
    top = tree["groups"][0] if tree["groups"] else None
    while args.all and top is not None and top["next_offset"] is not None:
        params["offset"] = top["next_offset"]
        page = api.call("GET", f"/v1/workflows/{args.id}", params=params)
        (more,) = [g for g in page["groups"] if g["id"] == top["id"]]
        top["members"] += more["members"]
        top["next_offset"] = more["next_offset"]
    return tree


def job_state(job: dict[str, Any], group: dict[str, Any] | None = None) -> str:
    """A job's state as the tree says it; a continuation without a record yet
    by what its group will do."""
    if job.get("state"):
        state = str(job["state"])
        if state == "in_progress" and job.get("percent"):
            return f"{state} {job['percent']}%"
        return state
    if group is None or job.get("when") is None:
        return "expired"
    if group["state"] in ("failed", "cancelled"):
        return f"will not run (group {group['state']})"
    if group["state"] == "done":
        return "not run (a member failed)" if job["when"] == "success" else "expired"
    return "waits for the members"


def group_line(group: dict[str, Any]) -> str:
    counts = group["counts"]
    shown = ", ".join(f"{counts[k]} {k}" for k in ("complete", "pending", "dead", "cancelled"))
    line = (
        f"{group['kind']} {group['id']} {group['state']}: {group['total']} members "
        f"({shown}), on child failure: {group['on_child_failure']}"
    )
    if failed := group.get("failed"):
        line += f"; failed by {failed['member_id']} ({failed['state']}"
        line += f": {_cell(failed['message'])[:80]})" if failed.get("message") else ")"
    return line


def tree_lines(group: dict[str, Any], focus: str, indent: str = "") -> list[str]:
    """A group, its members (a page: the rest counted), its continuations and
    their nested groups, as lines of a tree."""
    lines = [group_line(group) + ("  <-" if group["id"] == focus else "")]
    if group.get("truncated"):
        return [*lines, f"{indent}└─ (not read: past the tree's bounds; show it by its id)"]
    entries: list[tuple[dict[str, Any] | None, str]] = []
    before = group.get("offset", 0)
    if before:
        entries.append((None, f"… {before} member(s) before this page"))
    entries += [(m, f"[{m['index']}]") for m in group["members"]]
    shown_to = before + len(group["members"])
    if group["next_offset"] is not None:
        more = f"… {group['total'] - shown_to} more member(s) (--all, or --offset {shown_to})"
        entries.append((None, more))
    entries += [(c, "then" if c["id"].endswith(".then") else "on success")
                for c in group["continuation_jobs"]]  # fmt: skip
    for n, (job, label) in enumerate(entries):
        last = n == len(entries) - 1
        branch, under = ("└─ ", "   ") if last else ("├─ ", "│  ")
        if job is None:
            lines.append(f"{indent}{branch}{label}")
            continue
        # One line per job, whatever its type or error holds.
        text = f"{label} {_cell(job.get('job_type') or '?')} {job['id']} {job_state(job, group)}"
        if job.get("error"):
            text += f" · {_cell(job['error'])[:80]}"
        lines.append(f"{indent}{branch}{text}{'  <-' if job['id'] == focus else ''}")
        for nested in job.get("groups", []):
            lines += [f"{indent}{under}└─ " + line if i == 0 else line for i, line in
                      enumerate(tree_lines(nested, focus, indent + under + "   "))]  # fmt: skip
        if job.get("more_groups"):
            lines.append(f"{indent}{under}└─ … {job['more_groups']} more group(s)")
    return lines


def cmd_tree(api: Api, args: argparse.Namespace) -> int:
    tree = _workflow(api, args)
    if args.json:
        say(json.dumps(tree, indent=2))
        return EXIT_OK
    focus = tree["focus"]
    indent = ""
    if root := tree.get("root"):
        say(f"{_cell(root.get('job_type') or '?')} {root['id']} {job_state(root)}"
            + ("  <-" if root["id"] == focus else ""))  # fmt: skip
        indent = "   "
    for group in tree["groups"]:
        for i, line in enumerate(tree_lines(group, focus, indent)):
            say(f"└─ {line}" if indent and i == 0 else line)
    if tree.get("truncated"):
        say("(the tree is bounded: some groups show counts only)", err=True)
    return EXIT_OK


def cmd_group_action(api: Api, args: argparse.Namespace) -> int:
    action = args.action
    answer = api.call("POST", f"/v1/groups/{args.id}/{action}")
    if args.json:
        say(json.dumps(answer, indent=2))
    else:
        say(f"{action}: {answer['done']} job(s)")
        say(group_line(answer["group"]))
    return EXIT_OK


def run_bulk(api: Api, args: argparse.Namespace, action: str, where: dict[str, Any]) -> int:
    preview = api.call("POST", "/v1/bulk/preview", json=where)
    count = preview["count"]
    at_least = "" if preview.get("exact", True) else "at least "
    say(f"{action}: {at_least}{count} job(s) match {json.dumps(where)}", err=True)
    if count == 0 and not args.json:
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("not confirmed: pass --yes to act without a prompt", EXIT_USAGE)
        if input(f"{action} them? [y/N] ").strip().lower() not in ("y", "yes"):
            say("nothing done", err=True)
            return EXIT_OK
    # Deleting every job says so, and deletes at most the jobs the preview counted.
    request: dict[str, Any] = {"action": action, "filter": where}
    if action == "delete" and not where:
        request.update({"all": True, "count": count})
    status = api.call("POST", "/v1/bulk", json=request)
    while status["state"] == "running":
        time.sleep(POLL_S)
        status = api.call("GET", f"/v1/bulk/{status['id']}")
        progress = (
            f"{status['done']} done, {status['skipped']} skipped, {status['matched']} matched"
        )
        say(f"{action}: {progress}", end="\r", err=True)  # the next overwrites it
    say(err=True)
    _out(args, status, [status], ("id", "action", "state", "matched", "done", "skipped", "error"))
    return EXIT_OK if status["state"] == "done" else EXIT_FAILED


def cmd_dead_requeue(api: Api, args: argparse.Namespace) -> int:
    return run_bulk(api, args, "requeue", _filter_of(args, state="dead"))


def cmd_bulk(api: Api, args: argparse.Namespace) -> int:
    return run_bulk(api, args, args.action, _filter_of(args))


QUEUE_COLUMNS = ("name", "paused", "ready", "deferred", "in_progress", "retrying", "dead",
                 "oldest_ready_age_s", "limits")  # fmt: skip


def cmd_queues(api: Api, args: argparse.Namespace) -> int:
    if args.action in ("pause", "resume"):
        if not args.name:
            raise CliError(f"conveyor queues {args.action} needs a queue name", EXIT_USAGE)
        queue = api.call("POST", f"/v1/queues/{args.name}/{args.action}")
        _out(args, queue, [queue], QUEUE_COLUMNS)
        return EXIT_OK
    queues = api.call("GET", "/v1/queues")["queues"]
    _out(args, queues, queues, QUEUE_COLUMNS)
    return EXIT_OK


def cmd_workers(api: Api, args: argparse.Namespace) -> int:
    workers = api.call("GET", "/v1/workers")["workers"]
    rows = [{**w, "running": len(w.get("running", []))} for w in workers]
    _out(args, workers, rows, ("name", "queue", "concurrency", "running", "last_seen", "version"))
    return EXIT_OK


def cmd_audit(api: Api, args: argparse.Namespace) -> int:
    items = api.call("GET", "/v1/audit", params={"limit": args.limit})["items"]
    _out(args, items, items, ("at", "who", "action", "target", "count", "detail"))
    return EXIT_OK


def _tree_parser(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("id", help=f"the {what}'s id")
    parser.add_argument(
        "--offset", type=int, help="the top group's first member (default: the id's page)"
    )
    parser.add_argument("--limit", type=int, default=20, help="members shown (at most 100)")
    parser.add_argument("--all", action="store_true", help="every member of the top group")
    parser.set_defaults(run=cmd_tree)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="conveyor", description="Operate Conveyor through its api.")
    top.add_argument("--url", default=os.environ.get("CONVEYOR_URL", DEFAULT_URL))
    top.add_argument(
        "--key-file", help=f"read the api key from this file (-: stdin), or set {KEY_ENV}"
    )
    # Refused (see `api_key`): kept so that its users are told what to do instead.
    top.add_argument("--key", help=argparse.SUPPRESS)
    top.add_argument("--json", action="store_true", help="JSON output")
    sub = top.add_subparsers(dest="command", required=True)

    jobs = sub.add_parser("jobs", help="find, show, cancel and requeue jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    listing = jobs.add_parser("list")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--all", action="store_true", help="every page")
    listing.set_defaults(run=cmd_jobs_list)
    for name, run in (("show", cmd_jobs_show), ("cancel", cmd_jobs_cancel),
                      ("requeue", cmd_jobs_requeue)):  # fmt: skip
        one = jobs.add_parser(name)
        one.add_argument("id")
        one.set_defaults(run=run)
        if name == "requeue":
            one.add_argument(
                "--start-over",
                action="store_true",
                help="drop the job's checkpoint: start from the beginning, not where it got to",
            )
    _tree_parser(jobs.add_parser("tree", help="the workflow around a job, as a tree"), "job")

    groups = sub.add_parser("groups", help="show, cancel and requeue a group").add_subparsers(
        dest="groups_command", required=True
    )
    _tree_parser(groups.add_parser("show", help="a group's workflow, as a tree"), "group")
    for name in ("cancel", "requeue"):
        one = groups.add_parser(name, help=f"{name} a whole group (and the groups it handed to)")
        one.add_argument("id")
        one.set_defaults(run=cmd_group_action, action=name)

    dead = sub.add_parser("dead", help="the dead letters").add_subparsers(
        dest="dead_command", required=True
    )
    requeue = dead.add_parser("requeue", help="requeue every dead job that matches")
    _filters(requeue, state=False)
    requeue.add_argument("--yes", "-y", action="store_true", help="no confirmation prompt")
    requeue.set_defaults(run=cmd_dead_requeue)

    bulk = sub.add_parser("bulk", help="cancel, requeue or delete every job that matches")
    bulk.add_argument("action", choices=["cancel", "requeue", "delete"])
    _filters(bulk)
    bulk.add_argument("--yes", "-y", action="store_true", help="no confirmation prompt")
    bulk.set_defaults(run=cmd_bulk)

    queues = sub.add_parser("queues", help="queue statistics; pause or resume a queue")
    queues.add_argument("action", nargs="?", choices=["list", "pause", "resume"], default="list")
    queues.add_argument("name", nargs="?")
    queues.set_defaults(run=cmd_queues)

    sub.add_parser("workers", help="live worker processes").set_defaults(run=cmd_workers)
    audit = sub.add_parser("audit", help="who did what")
    audit.add_argument("--limit", type=int, default=50)
    audit.set_defaults(run=cmd_audit)
    return top


def api_key(args: argparse.Namespace) -> str:
    """The key, from `--key-file` or the environment; never from the command line."""
    if args.key is not None:
        raise CliError(
            "--key is not accepted: a key on the command line is visible to every user "
            f"of this machine (ps, shell history). Set {KEY_ENV}, or pass --key-file PATH",
            EXIT_USAGE,
        )
    if args.key_file:
        try:
            if args.key_file == "-":
                key = sys.stdin.readline()
            else:
                with open(args.key_file, encoding="utf-8") as file:
                    key = file.readline()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the key file: {exc}", EXIT_USAGE) from exc
        if not key.strip():
            raise CliError(f"the key file {args.key_file} is empty", EXIT_AUTH)
        return key.strip()
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise CliError(f"no api key: set {KEY_ENV}, or pass --key-file PATH", EXIT_AUTH)
    return key


def _segment(value: str) -> str:
    """`value` as one path segment: a job id's tag (`{queue}`) and anything
    else a URL does not take as it is, percent-encoded."""
    return quote(value, safe="")


def main(argv: Sequence[str] | None = None, transport: httpx.BaseTransport | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        api = Api(args.url, api_key(args), transport=transport)
        code: int = args.run(api, args)
        return code
    except CliError as exc:
        say(f"conveyor: {exc}", err=True)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
