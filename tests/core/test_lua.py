"""The Lua loader: explicit includes, each library once, cycles and repeats refused."""

from pathlib import Path

import pytest

from conveyor_core.lua import LuaIncludeError, assemble, library, lua_script, resolve


def _scripts(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / f"{name}.lua"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_script_carries_only_the_libraries_it_includes() -> None:
    """Redis runs a script's whole text on every call: the rate limit's carries
    GCRA alone, a read the key names too, the end of a try the claim as well."""
    rate_limit, read, finish = (lua_script(n) for n in ("rate_limit", "read", "finish"))
    assert "local function gcra" in rate_limit
    assert "local function qkey" not in rate_limit
    assert "local function qkey" in read
    assert "local function transition" not in read
    for needed in ("qkey", "transition", "claim_jobs"):
        assert f"local function {needed}" in finish
    assert "local function gcra" not in finish
    assert lua_script("finish").startswith("#!lua")  # its flags stay the first line
    assert "@include" not in finish.partition("\n")[0]


def test_includes_come_depth_first_and_once(tmp_path: Path) -> None:
    root = _scripts(
        tmp_path,
        {
            "lib/a": "local function a() end",
            "lib/b": '--- @include "lib/a"\nlocal function b() a() end',
            "lib/c": '--- @include "lib/a"\nlocal function c() a() end',
            "main": '#!lua flags=no-writes\n--- @include "lib/b"\n--- @include "lib/c"\nreturn 1',
        },
    )
    assert resolve(root, "main") == ["lib/a", "lib/b", "lib/c"]
    text = assemble(root, "main")
    assert text.startswith("#!lua flags=no-writes\nlocal K = {")
    assert text.count("local function a()") == 1
    assert text.index("local function a()") < text.index("local function b()")
    assert text.rstrip().endswith("return 1")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {
                "lib/a": '--- @include "lib/b"',
                "lib/b": '--- @include "lib/a"',
                "main": '--- @include "lib/a"',
            },
            "include cycle: main -> lib/a -> lib/b -> lib/a",
        ),
        (
            {"lib/a": "", "main": '--- @include "lib/a"\n--- @include "lib/a"'},
            "includes ['lib/a'] more than once",
        ),
        ({"main": '--- @include "lib/nowhere"'}, "includes 'lib/nowhere', which does not exist"),
    ],
)
def test_cycles_repeats_and_missing_files_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    root = _scripts(tmp_path, files)
    with pytest.raises(LuaIncludeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        assemble(root, "main")


def test_a_library_of_functions_refuses_a_name_two_of_its_libraries_declare(
    tmp_path: Path,
) -> None:
    """Scripts that each include a different `lib/x` and `lib/y` run alone as
    scripts; in one function library their top levels are one: refused."""
    root = _scripts(
        tmp_path,
        {
            "lib/x": "local function shared() return 1 end",
            "lib/y": "local function shared() return 2 end",
            "one": '#!lua\n--- @include "lib/x"\nreturn shared()',
            "two": '#!lua flags=allow-oom\n--- @include "lib/y"\nreturn shared()',
        },
    )
    with pytest.raises(LuaIncludeError, match="both declare 'shared'"):
        library(root, [("one", "one", None), ("two", "two", None)])
    code, names = library(root, [("one", "one", None), ("one_oom", "one", "#!lua flags=allow-oom")])
    assert code.count("local function run_one(KEYS, ARGV)") == 1
    assert (
        f"function_name = '{names['one_oom']}', callback = run_one, flags = {{'allow-oom'}}" in code
    )
