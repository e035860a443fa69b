"""The Lua loader: a script from `lua/`, with the libraries it includes.

A script names what it uses, one line per library, after its flags line:

    --- @include "lib/transition"

The loader puts `K` (the key names and constants both sides share) first,
then each included library once, depth first (a library's own includes
before it), then the script. A cycle, an include of a missing file, or the
same include twice in one file is an error: a reader of a script sees every
library it uses, and nothing else comes in. (BullMQ's scripts include their
`includes/` the same way.)
"""

import hashlib
import json
import re
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)

from conveyor_core import keys
from conveyor_core.history import HISTORY_TTL_S
from conveyor_core.jobs import DEFAULT_PRIORITY, HIGHEST_PRIORITY, LOWEST_PRIORITY
from conveyor_core.scores import PRIORITY_BAND_MS

INCLUDE = re.compile(r'^--- @include "([\w/]+)"\s*$', re.MULTILINE)
# What a library declares at its top level (its functions and tables).
DECLARED = re.compile(r"^local (?:function )?(\w+)", re.MULTILINE)


class LuaIncludeError(ValueError):
    """A script's includes cannot be resolved: a cycle, a repeat or a missing file."""


def lua_constants() -> str:
    """keys.py's names and the shared constants, as the table `K` every script starts with."""
    constants = {
        "prefix": keys.PREFIX,
        "job": keys.JOB_PREFIX,
        "events": keys.EVENTS_PREFIX,
        "arq_job": job_key_prefix,
        "arq_lock": in_progress_key_prefix,
        "arq_result": result_key_prefix,
        "arq_expiry_extra_ms": keys.ARQ_EXPIRY_EXTRA_MS,
        "group": keys.GROUP_PREFIX,
        "group_open_ms": keys.GROUP_OPEN_S * 1000,
        "group_keep_ms": keys.GROUP_KEEP_S * 1000,
        "outbox_message": keys.OUTBOX_MESSAGE.decode(),
        "history_ttl_s": HISTORY_TTL_S,
        "band_ms": PRIORITY_BAND_MS,
        "default_priority": DEFAULT_PRIORITY,
        "highest_priority": HIGHEST_PRIORITY,
        "lowest_priority": LOWEST_PRIORITY,
    }
    fields = ", ".join(f"{name} = {json.dumps(value)}" for name, value in constants.items())
    return f"local K = {{{fields}}}"


def _split_flags(text: str) -> tuple[str, str]:
    """(the `#!lua ...` flags line or '', the rest)."""
    if text.startswith("#!"):
        first, _, rest = text.partition("\n")
        return first, rest
    return "", text


def resolve(root: Traversable, name: str) -> list[str]:
    """The libraries `name` includes, directly or not, in load order (each once)."""
    order: list[str] = []

    def visit(current: str, stack: tuple[str, ...]) -> None:
        path = root.joinpath(f"{current}.lua")
        if not path.is_file():
            raise LuaIncludeError(f"{stack[-1]}.lua includes {current!r}, which does not exist")
        wanted = INCLUDE.findall(path.read_text())
        repeated = {lib for lib in wanted if wanted.count(lib) > 1}
        if repeated:
            raise LuaIncludeError(f"{current}.lua includes {sorted(repeated)} more than once")
        for lib in wanted:
            if lib in stack or lib == current:
                cycle = " -> ".join([*stack, current, lib])
                raise LuaIncludeError(f"include cycle: {cycle}")
            if lib not in order:
                visit(lib, (*stack, current))
        if stack:  # the script itself is not a library
            order.append(current)

    visit(name, ())
    return order


def assemble(root: Traversable, name: str, shebang: str | None = None, between: str = "") -> str:
    """The text Redis runs for `lua/{name}.lua` under `root` (`between` goes
    after the libraries, before the script: the linter's line)."""
    flags, body = _split_flags(root.joinpath(f"{name}.lua").read_text())
    libraries = [
        _split_flags(root.joinpath(f"{lib}.lua").read_text())[1] for lib in resolve(root, name)
    ]
    flags = flags if shebang is None else shebang
    return "\n".join(filter(None, [flags, lua_constants(), *libraries, between, body]))


def declared(root: Traversable, name: str) -> list[str]:
    """What the libraries `name` includes declare at their top level (for the linter)."""
    return [
        found
        for lib in resolve(root, name)
        for found in DECLARED.findall(root.joinpath(f"{lib}.lua").read_text())
    ]


# A script's flags line: `#!lua` and, for a script with flags, `flags=a,b`.
FLAGS = re.compile(r"\bflags=([\w,-]+)")


def library(
    root: Traversable, functions: Sequence[tuple[str, str, str | None]]
) -> tuple[str, dict[str, str]]:
    """Scripts of `lua/` under `root` as one Redis function library (FUNCTION
    LOAD, Redis 7): its text, and each function's name by its key.

    `functions` are (key, script, shebang or None: the script's own flags
    line). `K` and the libraries the scripts include are the library's top
    level, built once when Redis loads it, not on every call as a script's
    are (a script defines each of its library functions again per EVALSHA);
    each script is the body of a function, with KEYS and ARGV as its
    arguments, and its flags are the function's. The names carry a digest of
    the text, so two versions never replace each other's while both run (a
    rolling upgrade).
    """
    libraries: list[str] = []
    bodies: dict[str, str] = {}
    registered: list[tuple[str, str, str]] = []  # key, body's script, flags
    for key, name, shebang in functions:
        for lib in resolve(root, name):
            if lib not in libraries:
                libraries.append(lib)
        flags_line, bodies[name] = _split_flags(root.joinpath(f"{name}.lua").read_text())
        found = FLAGS.search(flags_line if shebang is None else shebang)
        flags = ", ".join(f"'{flag}'" for flag in found.group(1).split(",")) if found else ""
        registered.append((key, name, flags))
    # One top level for every script's libraries: a name two of them declare
    # would hide one from the functions defined after it.
    owners: dict[str, str] = {}
    for lib in libraries:
        for found_name in DECLARED.findall(root.joinpath(f"{lib}.lua").read_text()):
            if owners.setdefault(found_name, lib) != lib:
                raise LuaIncludeError(
                    f"{lib}.lua and {owners[found_name]}.lua both declare {found_name!r}"
                )
    code = "\n".join(
        [
            lua_constants(),
            *(_split_flags(root.joinpath(f"{lib}.lua").read_text())[1] for lib in libraries),
            *(
                f"local function run_{name}(KEYS, ARGV)\n{body}\nend"
                for name, body in bodies.items()
            ),
        ]
    )
    signature = "\n".join([code, *(f"{key} {flags}" for key, _, flags in registered)])
    digest = hashlib.sha1(signature.encode(), usedforsecurity=False).hexdigest()[:16]
    names = {key: f"conveyor_{key}_{digest}" for key, _, _ in registered}
    registers = [
        f"redis.register_function{{function_name = '{names[key]}', callback = run_{name}, "
        f"flags = {{{flags}}}}}"
        for key, name, flags in registered
    ]
    return "\n".join([f"#!lua name=conveyor_{digest}", code, *registers]), names


# The scripts every job runs, as one library: submit, claim, and the end of a
# try (finish, allow-oom; finish and fetch, which adds data: no flags). One
# library, so the first submit or claim loads the end of a try too: Redis at
# maxmemory refuses FUNCTION LOAD, and a try must still end then.
JOB_FUNCTIONS = (
    ("submit", "submit", None),
    ("claim", "claim", None),
    ("finish", "finish", None),
    ("finish_and_fetch", "finish", "#!lua"),
)


@cache
def job_library() -> tuple[str, dict[str, str]]:
    """JOB_FUNCTIONS as one function library (see `library`)."""
    return library(files("conveyor_core").joinpath("lua"), JOB_FUNCTIONS)


@cache
def lua_script(name: str, shebang: str | None = None) -> str:
    """A script of core's `lua/`, assembled (see `assemble`).

    A script's first line may declare its flags (`#!lua flags=...`, Redis 7):
    one that adds data has none, so a Redis at maxmemory refuses it before it
    runs, never halfway; one that ends jobs (and so frees memory) is
    `allow-oom`; a read is `no-writes`. `shebang` replaces that line.
    """
    return assemble(files("conveyor_core").joinpath("lua"), name, shebang)
