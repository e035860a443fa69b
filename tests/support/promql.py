"""Just enough PromQL reading to name the metrics an expression uses."""

import re
from typing import Any

# Every Conveyor metric starts `conveyor_`; a recorded series is
# `level:conveyor_...:operations`.
METRIC = re.compile(r"(?<![\w:])(?:[a-z_]+:)?conveyor_[a-z0-9_]+(?::[a-z0-9_]+)?")
# Any name right before a label selector.
SELECTED = re.compile(r"([A-Za-z_:][\w:]*)\s*\{")


def metric_names(expr: str) -> set[str]:
    """The metrics `expr` reads; fails on a selector of a metric that is not Conveyor's."""
    names = set(METRIC.findall(expr))
    for selected in SELECTED.findall(expr):
        assert selected in names, f"{expr!r} selects {selected!r}, not a Conveyor metric"
    return names


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's `$name` variables as the dashboard would."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", variables[name])
    assert "$" not in expr, f"a variable is left in {expr!r}"
    return expr
