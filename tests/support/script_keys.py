"""The keys each script call really touches, seen by Redis's MONITOR.

MONITOR shows every command a server runs, those a script or function runs
too (from the client "lua", right after the EVALSHA or FCALL that ran them:
a call is atomic, so nothing comes between). `watch_calls` records them;
`ScriptCall.touched` is what Redis's own command table says their keys are
(COMMAND GETKEYSANDFLAGS, which leaves out a sharded channel: a channel is
not a key). A server that refuses undeclared keys (Dragonfly's default)
refuses a call whose `undeclared` is not empty.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ResponseError

# `1796488166.429196 [0 127.0.0.1:45734] "EVALSHA" "..." ...`; a script's own: `[0 lua]`.
LINE = re.compile(rb"^\+?[\d.]+ \[(\d+) ([^\]]*)\] (.*)$", re.DOTALL)
# Redis's quoting of an argument (sdscatrepr): "...", with \\ \" \n \r \t \a \b \xHH.
ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}
CALLS = {b"EVALSHA", b"EVAL", b"EVALSHA_RO", b"EVAL_RO", b"FCALL", b"FCALL_RO"}
END = b"conveyor-script-keys-end"


def parse_args(text: bytes) -> list[bytes]:
    """A MONITOR line's arguments, unquoted."""
    args: list[bytes] = []
    i = 0
    while i < len(text):
        if text[i : i + 1] != b'"':
            i += 1
            continue
        arg = bytearray()
        i += 1
        while text[i : i + 1] != b'"':
            if text[i : i + 1] == b"\\":
                nxt = text[i + 1 : i + 2]
                if nxt == b"x":
                    arg.append(int(text[i + 2 : i + 4], 16))
                    i += 4
                    continue
                arg += ESCAPES.get(nxt, nxt)
                i += 2
                continue
            arg += text[i : i + 1]
            i += 1
        args.append(bytes(arg))
        i += 1
    return args


@dataclass
class ScriptCall:
    """One EVALSHA or FCALL, and the commands its script ran."""

    name: str  # the script's sha1 or the function's name, as the call gave it
    declared: set[str]  # its KEYS
    commands: list[list[bytes]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)

    @property
    def undeclared(self) -> set[str]:
        return self.touched - self.declared


@dataclass
class Watched:
    """The calls seen while watching, filled in once the watch ends."""

    calls: list[ScriptCall] = field(default_factory=list)


def _calls(lines: Iterable[tuple[bool, list[bytes]]]) -> list[ScriptCall]:
    calls: list[ScriptCall] = []
    current: ScriptCall | None = None
    for from_lua, args in lines:
        if from_lua:
            if current is not None:
                current.commands.append(args)
            continue
        current = None
        if args and args[0].upper() in CALLS:
            numkeys = int(args[2])
            declared = {key.decode("utf-8", "replace") for key in args[3 : 3 + numkeys]}
            current = ScriptCall(args[1].decode(), declared)
            calls.append(current)
    return calls


async def _keys_of(redis: Redis, calls: list[ScriptCall]) -> None:
    """Each call's keys touched, by the server's command table (one pipeline)."""
    commands = [command for call in calls for command in call.commands]
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands:
            # One name, so redis-py leaves the reply as it is (no COMMAND parser).
            pipe.execute_command("COMMAND GETKEYSANDFLAGS", *command)
        replies = await pipe.execute(raise_on_error=False)
    by_command = iter(replies)
    for call in calls:
        for _ in call.commands:
            reply = next(by_command)
            if isinstance(reply, ResponseError):  # "no key arguments": TIME, SPUBLISH...
                continue
            for key, flags in reply:
                if b"NOT_KEY" not in {flag.upper() for flag in flags}:
                    call.touched.add(key.decode("utf-8", "replace"))


@asynccontextmanager
async def watch_calls(url: str, db: int) -> AsyncIterator[Watched]:
    """Every script call on database `db` of the Redis at `url` while the block runs."""
    watched = Watched()
    lines: list[tuple[bool, list[bytes]]] = []
    client = Redis.from_url(url)
    monitor = client.monitor()
    await monitor.connect()
    connection = monitor.connection
    assert connection is not None
    await connection.send_command("MONITOR")
    assert await connection.read_response() in (b"OK", "OK", True)

    async def read() -> None:
        while True:
            raw = await connection.read_response()
            text = raw if isinstance(raw, bytes) else str(raw).encode()
            found = LINE.match(text)
            if found is None:
                continue
            line_db, source, rest = found.groups()
            args = parse_args(rest)
            if args[:2] == [b"ECHO", END]:
                return
            if int(line_db) == db:
                lines.append((source == b"lua", args))

    reader = asyncio.create_task(read())
    try:
        yield watched
        await client.echo(END)
        await asyncio.wait_for(reader, timeout=30)
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError):
            await reader
        await connection.disconnect()
    try:
        watched.calls = _calls(lines)
        await _keys_of(client, watched.calls)
    finally:
        await client.aclose()
