"""Every key a script touches is declared, or written below with its reason.

Redis and Valkey (cluster or not) let a script touch a key it did not
declare in KEYS as long as the key is in the call's slot; a server that
enforces declared keys (Dragonfly's default) refuses it. This test runs
every script and function of core's loader through its main paths on a real
Redis with MONITOR on, reads the keys each call touched from the commands
its script ran (tests/support/script_keys.py), and fails on any undeclared
key that is not in UNDECLARED, and on an entry of UNDECLARED no call needs
any more (so the list stays exact: docs/how-to/redis-cluster.md quotes it).
"""

import hashlib
import re
from importlib.resources import files
from urllib.parse import urlsplit

from arq.connections import ArqRedis

from conveyor_core.lua import job_library, lua_script
from tests.support.every_script import exercise, exercised_catalog
from tests.support.script_keys import ScriptCall, watch_calls

# Why a key is not declared.
CLAIMED = (
    "a job the claim takes: its id is popped from the queue (or the ring of its "
    "type's keys) in the call, so the caller cannot know its keys before"
)
FAIRNESS_KEY = (
    "the job's fairness key is its payload's, kept in its record's flow entry "
    "(read in the call): the caller is given the job's id, not its payload"
)
DEBOUNCED = "debounce: the job a debounce key keeps is read from the key in the call"
CONTINUATION_ELSEWHERE = (
    "a continuation of another queue than its group's members' (one node only: a "
    "cluster's goes to the outbox), started by the last member's end: its queue "
    "is in its group's hash, read in the call (lib/group.lua)"
)
OUTBOX_TAKEN = (
    "the group of an entry the take finds due: the caller is given the outbox, "
    "not its entries (group_outbox.lua)"
)

# Every undeclared key a script touches on its main paths, by script (or
# function) and the shape of its name (`shape`), with the reason. A server that
# refuses undeclared keys needs these allowed (docs/how-to/redis-cluster.md).
UNDECLARED: dict[str, dict[str, str]] = {
    "claim": {
        "arq:job:<id>": CLAIMED,
        "arq:in-progress:<id>": CLAIMED,
        "conveyor:job:<id>": CLAIMED,
        "arq:job:<group>.<index>": CLAIMED,
        "arq:in-progress:<group>.<index>": CLAIMED,
        "conveyor:job:<group>.<index>": CLAIMED,
        "conveyor:{<queue>}:keyq:<type>:<key>": CLAIMED,
        "conveyor:{<queue>}:running-count-key:<type>:<key>": CLAIMED,
        "conveyor:{<queue>}:hold-key:<type>:<key>": CLAIMED,
    },
    "submit": {"arq:job:<id>": DEBOUNCED, "conveyor:job:<id>": DEBOUNCED},
    "finish": {
        "conveyor:{<queue>}:keyq:<type>:<key>": FAIRNESS_KEY,
        "conveyor:{<queue>}:running-count-key:<type>:<key>": FAIRNESS_KEY,
        "conveyor:{<queue>}:hold-key:<type>:<key>": FAIRNESS_KEY,
        "<queue>": CONTINUATION_ELSEWHERE,
        "conveyor:{<queue>}:history:<minute>": CONTINUATION_ELSEWHERE,
    },
    "settle": {
        "conveyor:{<queue>}:keyq:<type>:<key>": FAIRNESS_KEY,
        "conveyor:{<queue>}:running-count-key:<type>:<key>": FAIRNESS_KEY,
    },
    "cancel": {"conveyor:{<queue>}:keyq:<type>:<key>": FAIRNESS_KEY},
    "requeue": {"conveyor:{<queue>}:keyq:<type>:<key>": FAIRNESS_KEY},
    "bulk": {"conveyor:{<queue>}:keyq:<type>:<key>": FAIRNESS_KEY},
    "group_outbox": {"conveyor:group:<group>": OUTBOX_TAKEN},
}


def script_names() -> dict[str, str]:
    """Each script's and function's name, by what a call names it with (sha1, function name)."""
    names = {
        hashlib.sha1(lua_script(p.name[:-4]).encode()).hexdigest(): p.name[:-4]
        for p in files("conveyor_core").joinpath("lua").iterdir()
        if p.name.endswith(".lua")
    }
    _, functions = job_library()
    return names | {function: key for key, function in functions.items()}


JOB_ID = re.compile(r"\{[^{}]+\}[0-9a-f]{32}")
# A group's id: `g` and 32 hex digits, after its queue shard's tag on a cluster.
GROUP_ID = re.compile(r"(\{[^{}]+\})?g[0-9a-f]{32}")
PER_TYPE = "running-count|start-log|hold|ring"
PER_KEY = "running-count-key|start-log-key|hold-key|keyq"


def shape(key: str, queues: set[str]) -> str:
    """A key's name with what varies per call (ids, queue, minute, type, key) as placeholders."""
    key = JOB_ID.sub("<id>", key)
    key = re.sub(GROUP_ID.pattern + r"\.\d+", "<group>.<index>", key)
    key = GROUP_ID.sub("<group>", key)
    if key in queues:
        return "<queue>"
    key = re.sub(r"^conveyor:\{[^{}]+\}:", "conveyor:{<queue>}:", key)
    key = re.sub(r":history:\d+$", ":history:<minute>", key)
    key = re.sub(rf":({PER_KEY}):[^:]+:.*$", r":\1:<type>:<key>", key)
    return re.sub(rf":({PER_TYPE}):[^:]+$", r":\1:<type>", key)


def undeclared(calls: list[ScriptCall], queues: set[str]) -> dict[str, set[str]]:
    """Per script or function (by name), the shapes of the keys its calls touched undeclared."""
    names = script_names()
    found: dict[str, set[str]] = {}
    for call in calls:
        name = names.get(call.name, call.name)
        found.setdefault(name, set()).update(shape(k, queues) for k in call.undeclared)
    return found


def allowed(script: str) -> dict[str, str]:
    """The undeclared keys `script` may touch, with why (finish and fetch also claims)."""
    return UNDECLARED.get(script, {}) | (
        UNDECLARED["claim"] if script == "finish_and_fetch" else {}
    )


async def test_every_key_a_script_touches_is_declared_or_allowed(
    redis: ArqRedis, redis_url: str
) -> None:
    db = int(urlsplit(redis_url).path.lstrip("/") or 0)
    catalog = exercised_catalog()
    queues = {shard for q in catalog.queues() for shard in catalog.shards(q)}
    async with watch_calls(redis_url, db) as watched:
        await exercise(redis)

    names = script_names()
    ran = {names.get(call.name, call.name) for call in watched.calls}
    assert set(names.values()) - ran == set(), "scripts the exercise did not run"
    assert all(call.touched for call in watched.calls if call.commands), "keys not read"
    found = undeclared(watched.calls, queues)
    refused = {
        script: sorted(shapes - set(allowed(script)))
        for script, shapes in found.items()
        if shapes - set(allowed(script))
    }
    assert refused == {}, "undeclared keys: declare them, or say in UNDECLARED why not"
    used = {(script, shape) for script, shapes in found.items() for shape in shapes}
    used |= {("claim", shape) for script, shape in used if script == "finish_and_fetch"}
    stale = sorted(
        (script, shape)
        for script, entries in UNDECLARED.items()
        for shape in entries
        if (script, shape) not in used
    )
    assert stale == [], "entries of UNDECLARED no call needs any more: drop them"


async def test_a_key_a_script_names_itself_is_seen_undeclared(
    redis: ArqRedis, redis_url: str
) -> None:
    """The watch itself: a script that touches a key it did not declare (its
    name quoted by MONITOR: a brace, a quote, a NUL byte) is caught; a
    sharded channel is not a key."""
    script = redis.register_script(
        r"""redis.call('SET', KEYS[1], ARGV[1]); redis.call('HSET', KEYS[1] .. '"x\0', 'f', 1);"""
        " redis.call('SPUBLISH', 'conveyor:events:{q}1', 1); return 1"
    )
    db = int(urlsplit(redis_url).path.lstrip("/") or 0)
    async with watch_calls(redis_url, db) as watched:
        assert await script(keys=["conveyor:{q}:a"], args=['value "quoted"'])
    (call,) = [call for call in watched.calls if call.commands]  # not the NOSCRIPT try
    assert call.declared == {"conveyor:{q}:a"}
    assert call.touched == {"conveyor:{q}:a", 'conveyor:{q}:a"x\x00'}
    assert call.undeclared == {'conveyor:{q}:a"x\x00'}
