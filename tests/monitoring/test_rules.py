"""The rule file passes promtool, and its unit tests prove every alert both ways."""

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.prometheus import RULES_FILE, RUNBOOKS, alert_rules, binary, load_rules

UNIT_TESTS = sorted((Path(__file__).parent / "rules").glob("*.test.yaml"))
SEVERITIES = {"critical", "warning"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_the_rule_file() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests found"
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def _alert_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def test_every_alert_is_tested_firing_and_staying_quiet() -> None:
    cases = _alert_cases()
    for name in {rule["alert"] for rule in alert_rules()}:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name} is never tested firing"
        assert any(not case.get("exp_alerts") for case in mine), f"{name} is never tested quiet"


def test_every_burn_rate_window_is_tested_firing() -> None:
    rules = [r for r in alert_rules() if r["alert"] == "ConveyorApiErrorBudgetBurn"]
    windows = {r["labels"]["long_window"] for r in rules}
    assert windows == {"1h", "6h", "1d", "3d"}
    fired = {
        alert["exp_labels"]["long_window"]
        for case in _alert_cases()
        if case["alertname"] == "ConveyorApiErrorBudgetBurn"
        for alert in case.get("exp_alerts") or []
    }
    assert fired == windows


def test_every_alert_says_how_bad_what_and_where_to_look() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
        assert annotations["runbook_url"] == f"docs/runbooks/{kebab}.md", name
        runbook = RUNBOOKS / f"{kebab}.md"
        assert runbook.is_file(), f"{name}: no runbook at {runbook}"
        text = runbook.read_text()
        assert text.startswith(f"# {name}\n"), f"{runbook} does not open with its alert's name"
        for section in ("## Check", "## Act"):
            assert section in text, f"{runbook} has no '{section}' section"


def test_every_runbook_belongs_to_an_alert() -> None:
    names = {re.sub(r"(?<!^)(?=[A-Z])", "-", rule["alert"]).lower() for rule in alert_rules()}
    pages = {page.stem for page in RUNBOOKS.glob("*.md") if page.name != "README.md"}
    assert pages == names


def test_recording_rules_follow_the_naming_convention() -> None:
    """`level:metric:operations`, so a recorded series says what it aggregates."""
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]
