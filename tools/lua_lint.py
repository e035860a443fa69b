"""`make check`'s Lua linter: luacheck over every script as Redis runs it.

Core's scripts are linted assembled (`K`, then their included libraries, then
the script: conveyor_core.lua.assemble), so an undefined name means a missing
`--- @include`; each library's top-level names count as used (a script rarely
uses all of a library). Job modules' scripts (the seed's) are linted as they are.

    python -m tools.lua_lint
"""

import shutil
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from conveyor_core.lua import assemble, declared

# What Redis gives a script (Lua 5.1 with these libraries).
REDIS_GLOBALS = ("redis", "KEYS", "ARGV", "cjson", "cmsgpack", "bit", "struct")


def scripts() -> dict[str, str]:
    """Each script's name and the text luacheck reads."""
    core = files("conveyor_core").joinpath("lua")
    out: dict[str, str] = {}
    for entry in sorted(core.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".lua"):
            continue
        name = entry.name.removesuffix(".lua")
        used = ", ".join(["K", *declared(core, name)])
        out[f"core-{name}.lua"] = assemble(core, name, between=f"local _ = {{{used}}}")
    seed = files("conveyor_seed").joinpath("lua")
    for entry in sorted(seed.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".lua"):
            out[f"seed-{entry.name}"] = entry.read_text()
    return out


def main() -> int:
    luacheck = shutil.which("luacheck")
    if luacheck is None:
        print("luacheck is missing: `make check-deps` installs it (Debian's lua-check)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, text in scripts().items():
            path = Path(tmp) / name
            # luacheck reads no `#!lua flags=...` line: keep it as a comment.
            path.write_text(text.replace("#!lua", "-- #!lua", 1) if text.startswith("#!") else text)
            paths.append(str(path))
        command = [luacheck, "--std", "lua51", "--no-max-line-length", "--codes", "--quiet"]
        command += ["--globals", *REDIS_GLOBALS, "--", *paths]
        result = subprocess.run(command, check=False)  # noqa: S603 (our own files)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
