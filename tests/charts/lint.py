"""`make chart-lint`: helm lint (strict) the chart with its defaults and every ci/ values file."""

import sys

from tests.charts.chart import lint, matrix, values_file

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def main() -> int:
    failed = False
    for name in matrix():
        report = lint(values_file(name))
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        for message in report["messages"]:
            print(
                f"{name}: [{SEVERITY[message['severity']]}] {message['path']}: {message['error']}"
            )
        for error in report["errors"]:
            print(f"{name}: [ERROR] {error}")
        failed = failed or bool(problems or report["errors"])
        print(f"{name}: {'failed' if problems or report['errors'] else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
