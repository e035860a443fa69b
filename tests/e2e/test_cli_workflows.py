"""`conveyor jobs tree` and `conveyor groups`, run as an operator runs them,
against a live api and worker: a workflow as a tree, bounded by a page."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, with_reader
from tests.e2e.test_cli import as_json, conveyor

pytestmark = pytest.mark.e2e

READER_KEY = "cvk_test_cli_tree_reader_0123456789abcdef"


@pytest.fixture
def cli_stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    yield from with_reader(redis_url, log_dir, READER_KEY)


def test_an_operator_reads_a_workflow_as_a_tree_a_page_at_a_time(cli_stack: Stack) -> None:
    stack = cli_stack
    starter = stack.submit("fan_out", {"children": 30})["id"]
    group_id = stack.wait_for_state(starter, "complete")["result"]
    stack.wait_for_state(f"{group_id}.then", "complete")

    tree = conveyor(stack, "jobs", "tree", starter)
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[0] == f"fan_out {starter} complete  <-"
    assert lines[1].startswith(f"└─ group {group_id} done: 30 members (30 complete, 0 pending")
    members = [line for line in lines if "] member " in line]
    assert len(members) == 20  # a page, not 30 lines
    assert f"[0] member {group_id}.0 complete" in members[0]
    assert "… 10 more member(s) (--all, or --offset 20)" in tree.stdout
    assert lines[-1].endswith(f"└─ then combine {group_id}.then complete")

    every = conveyor(stack, "jobs", "tree", starter, "--all")
    assert len([line for line in every.stdout.splitlines() if "] member " in line]) == 30
    assert "more member(s)" not in every.stdout
    around = conveyor(stack, "jobs", "tree", f"{group_id}.25")  # the page that holds it
    assert "… 20 member(s) before this page" in around.stdout
    assert f"[25] member {group_id}.25 complete  <-" in around.stdout
    page = conveyor(stack, "groups", "show", f"{group_id}.25", "--offset", "25", "--limit", "3")
    assert "… 25 member(s) before this page" in page.stdout
    assert f"[25] member {group_id}.25 complete  <-" in page.stdout
    assert "… 2 more member(s) (--all, or --offset 28)" in page.stdout

    shown = as_json(conveyor(stack, "--json", "groups", "show", group_id, key=READER_KEY))
    assert shown["focus"] == group_id
    assert shown["root"]["id"] == starter
    assert shown["groups"][0]["counts"]["complete"] == 30
    assert conveyor(stack, "groups", "show", "g" + "0" * 32).returncode == 4
    assert conveyor(stack, "jobs", "tree", "no-such-job").returncode == 4


def test_a_failed_workflow_says_why_and_is_requeued_whole_with_the_cli(cli_stack: Stack) -> None:
    stack = cli_stack
    starter = stack.submit("fan_out", {"children": 3, "fail_index": 1})["id"]
    group_id = stack.wait_for_state(starter, "complete")["result"]
    stack.wait_for_state(f"{group_id}.1", "dead")

    tree = conveyor(stack, "groups", "show", group_id)
    assert tree.returncode == 0, tree.stderr
    assert f"group {group_id} failed: 3 members" in tree.stdout
    assert f"failed by {group_id}.1 (dead: member 1 fails on purpose)" in tree.stdout
    assert f"[1] member {group_id}.1 dead · PermanentJobError: member 1 fails" in tree.stdout
    assert f"then combine {group_id}.then will not run (group failed)" in tree.stdout

    # A read-only key may look, not act.
    assert conveyor(stack, "groups", "requeue", group_id, key=READER_KEY).returncode == 3
    requeued = conveyor(stack, "groups", "requeue", group_id)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.startswith("requeue: 1 job(s)")
