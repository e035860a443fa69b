"""Conveyor's Grafana dashboard, written as code: `make dashboard` writes
charts/conveyor/files/grafana/conveyor.json, and a test fails when the two differ.

Plain dictionaries in Grafana's dashboard JSON model, because the model is the
contract Grafana reads; the helpers below only assign panel ids and lay the
panels out on Grafana's 24-column grid, row by row.

    python -m tools.dashboard [PATH]
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parents[1] / "charts/conveyor/files/grafana/conveyor.json"
# Grafana 12's dashboard schema; Grafana migrates older ones on load, never newer.
SCHEMA_VERSION = 41
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# Label selectors every query starts from; the variables narrow them.
NS = 'namespace=~"$namespace"'
QUEUE = f'{NS}, queue=~"$queue"'
JOB = f'{QUEUE}, job=~"$job"'
# Probes and scrapes are not user traffic; the SSE stream is open for a job's
# whole life, so it is not a latency either (as in the alerts).
USER_ROUTES = 'route!~"/healthz|/readyz|/metrics"'
TIMED_ROUTES = 'route!~"/healthz|/readyz|/metrics|/v1/jobs/\\\\{job_id\\\\}/events"'
RATE = "[$__rate_interval]"


@dataclass
class Query:
    expr: str
    legend: str = ""
    # Histograms carry trace-id exemplars: Grafana links each to its trace.
    exemplar: bool = False


@dataclass
class Panel:
    title: str
    description: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    stacked: bool = False
    max_value: float | None = None


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(metric: str, selector: str, by: str) -> list[Query]:
    return [
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}{RATE})))",
            f"p{round(q * 100)} {{{{{by}}}}}",
            exemplar=True,
        )
        for q in (0.5, 0.95, 0.99)
    ]


ROWS = [
    Row(
        "Is it healthy?",
        [
            Panel(
                "Redis reachable",
                "1 when every Conveyor process reached Redis on its last command.",
                [Query(f"min(conveyor_redis_up{{{NS}}})")],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Api availability (1h)",
                "Share of user requests answered without a 5xx; the objective is 99.9 %.",
                [Query(f"1 - max(namespace:conveyor_http_requests:error_ratio_rate1h{{{NS}}})")],
                unit="percentunit",
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Job failure ratio (5m)",
                "Share of finished tries that failed, over the selected jobs.",
                [Query(f"max(namespace_queue_job:conveyor_jobs_failed:ratio_rate5m{{{JOB}}})")],
                unit="percentunit",
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Dead letters",
                "Jobs waiting in the dead letters for someone to requeue them.",
                [Query(f'sum(max by (queue) (conveyor_queue_jobs{{{QUEUE}, state="dead"}}))')],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Queue latency",
                "How long the oldest ready job has waited since it was due, worst queue.",
                [Query(f"max(conveyor_queue_oldest_ready_age_seconds{{{QUEUE}}})")],
                unit="s",
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Jobs in progress",
                "Tries running now, over every worker.",
                [Query(f"sum(conveyor_jobs_in_progress{{{JOB}}})")],
                kind="stat",
                width=4,
                height=4,
            ),
        ],
    ),
    Row(
        "Api",
        [
            Panel(
                "Requests by route",
                "Requests answered per second (probes and scrapes excluded).",
                [
                    Query(
                        "sum by (method, route) (rate(conveyor_http_requests_total"
                        f"{{{NS}, {USER_ROUTES}}}{RATE}))",
                        "{{method}} {{route}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Errors by route and status",
                "4xx are the clients' mistakes; 5xx spend the error budget.",
                [
                    Query(
                        "sum by (route, status) (rate(conveyor_http_requests_total"
                        f'{{{NS}, status=~"[45].."}}{RATE}))',
                        "{{status}} {{route}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Latency by route",
                "Answer time percentiles; exemplars link to the request's trace.",
                quantiles(
                    "conveyor_http_request_duration_seconds", f"{NS}, {TIMED_ROUTES}", "route"
                ),
                unit="s",
            ),
            Panel(
                "Error budget burn rate",
                "5xx ratio over the alerting windows, in multiples of the 0.1 % budget: "
                "14.4 over 1h and 5m pages, 6 over 6h and 30m pages.",
                [
                    Query(
                        f"max(namespace:conveyor_http_requests:error_ratio_rate{w}{{{NS}}})"
                        " / 0.001",
                        w,
                    )
                    for w in ("5m", "30m", "1h", "6h")
                ],
            ),
        ],
    ),
    Row(
        "Queues",
        [
            Panel(
                "Queue depth by state",
                "Jobs ready (due, waiting for a worker), deferred, in progress and dead.",
                [
                    Query(
                        f"max by (queue, state) (conveyor_queue_jobs{{{QUEUE}}})",
                        "{{queue}} {{state}}",
                    )
                ],
            ),
            Panel(
                "Queue latency and objective",
                "How long the oldest ready job has waited since it was due, against the "
                "queue's objective (ConveyorQueueLatencyHigh).",
                [
                    Query(
                        f"max by (queue) (conveyor_queue_oldest_ready_age_seconds{{{QUEUE}}})",
                        "{{queue}}",
                    ),
                    Query(
                        "max by (queue) (queue:conveyor_queue_oldest_ready_age_seconds:objective"
                        '{queue=~"$queue"})',
                        "{{queue}} objective",
                    ),
                ],
                unit="s",
            ),
            Panel(
                "Enqueue rate by job",
                "Jobs enqueued per second, by the api and by jobs that enqueue jobs.",
                [
                    Query(
                        f"sum by (job) (rate(conveyor_jobs_enqueued_total{{{JOB}}}{RATE}))",
                        "{{job}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Flow control: paused queues and held jobs",
                "1 while a queue is paused (ConveyorQueuePausedTooLong); held jobs: due jobs "
                "a worker's last claim passed over because of a running limit or a rate of "
                "their type or key.",
                [
                    Query(
                        f"max by (queue) (conveyor_queue_paused{{{QUEUE}}})",
                        "{{queue}} paused",
                    ),
                    Query(
                        f"max by (queue, reason) (conveyor_jobs_held{{{QUEUE}}})",
                        "{{queue}} held: {{reason}}",
                    ),
                ],
            ),
        ],
    ),
    Row(
        "Jobs",
        [
            Panel(
                "Throughput by job",
                "Tries that completed their job per second.",
                [
                    Query(
                        "sum by (job) (rate(conveyor_jobs_finished_total"
                        f'{{{JOB}, outcome="complete"}}{RATE}))',
                        "{{job}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Outcomes",
                "Tries finished per second by outcome: complete, retrying (failed, another "
                "try is due), dead (a permanent error or no tries left), cancelled, "
                "interrupted (cut short by a shutdown; queued again, the try not counted).",
                [
                    Query(
                        f"sum by (outcome) (rate(conveyor_jobs_finished_total{{{JOB}}}{RATE}))",
                        "{{outcome}}",
                    )
                ],
                unit="ops",
                stacked=True,
            ),
            Panel(
                "Retries and dead letters by job",
                "Failed tries per second: retrying means another try is due; dead went to "
                "the dead letters.",
                [
                    Query(
                        "sum by (job, outcome) (rate(conveyor_jobs_finished_total"
                        f'{{{JOB}, outcome=~"retrying|dead"}}{RATE}))',
                        "{{job}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Failure ratio by job",
                "Share of finished tries that failed over 5 minutes "
                "(ConveyorJobFailureRatioHigh fires over 10 %).",
                [
                    Query(
                        "max by (job) (namespace_queue_job:conveyor_jobs_failed:ratio_rate5m"
                        f"{{{JOB}}})",
                        "{{job}}",
                    )
                ],
                unit="percentunit",
                max_value=1,
            ),
            Panel(
                "Job duration",
                "How long tries ran; exemplars link to the try's trace.",
                quantiles("conveyor_job_duration_seconds", JOB, "job"),
                unit="s",
            ),
            Panel(
                "Queue wait",
                "From when a try was due to its start (deferral and backoff excluded).",
                quantiles("conveyor_job_queue_wait_seconds", JOB, "job"),
                unit="s",
            ),
        ],
    ),
    Row(
        "Workers",
        [
            Panel(
                "Jobs in progress by job",
                "Tries running now.",
                [Query(f"sum by (job) (conveyor_jobs_in_progress{{{JOB}}})", "{{job}}")],
                stacked=True,
                width=6,
            ),
            Panel(
                "Worker heartbeat age",
                "Seconds since each worker's poll loop last turned; over 60 s, "
                "ConveyorWorkerHeartbeatStale.",
                [
                    Query(
                        f"time() - conveyor_worker_heartbeat_timestamp_seconds{{{QUEUE}}}",
                        "{{queue}} {{instance}}",
                    )
                ],
                unit="s",
                width=6,
            ),
            Panel(
                "Redis reachable by process",
                "1 when the process reached Redis on its last command.",
                [Query(f"conveyor_redis_up{{{NS}}}", "{{instance}}")],
                width=6,
                max_value=1,
            ),
            Panel(
                "Submits short of replicas",
                "Submits per second that fewer replicas than REDIS_WAIT_REPLICAS "
                "acknowledged in time (each a 503; ConveyorRedisReplicasShort after 10 "
                "minutes): a failover now may lose their jobs.",
                [
                    Query(
                        f"sum by (queue) (rate(conveyor_redis_wait_short_total{{{QUEUE}}}{RATE}))",
                        "{{queue}}",
                    )
                ],
                unit="ops",
                width=6,
            ),
        ],
    ),
    Row(
        "Blob store",
        [
            Panel(
                "Bytes written to the blob store by kind",
                "Documents, and payloads and results offloaded by their job type's "
                "offload_above_bytes (claim-check).",
                [
                    Query(
                        f"sum by (kind) (rate(conveyor_blob_bytes_written_total{{{NS}}}{RATE}))",
                        "{{kind}}",
                    )
                ],
                unit="Bps",
                stacked=True,
                width=12,
            ),
            Panel(
                "Stored bytes of quota by api key",
                "What each key with max_stored_bytes keeps in the blob store, of its quota; "
                "over 90 %, ConveyorStoredBytesNearQuota.",
                [
                    Query(
                        f"max by (api_key) (conveyor_stored_bytes{{{NS}}}) / "
                        f"max by (api_key) (conveyor_stored_bytes_limit{{{NS}}})",
                        "{{api_key}}",
                    )
                ],
                unit="percentunit",
                max_value=1,
                width=12,
            ),
        ],
    ),
]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "exemplar": query.exemplar,
            "legendFormat": query.legend or "__auto",
            "range": True,
            "refId": chr(ord("A") + index),
        }
        for index, query in enumerate(panel.queries)
    ]
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "fillOpacity": 10,
            "showPoints": "never",
            "stacking": {"group": "A", "mode": "normal" if panel.stacked else "none"},
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "colorMode": "value",
            "graphMode": "area",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
    return {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "id": panel_id,
        "options": options,
        "targets": targets,
        "title": panel.title,
        "type": panel.kind,
    }


def _layout(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows top to bottom; panels left to right, wrapping at the grid's width."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row in rows:
        panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "id": next_id,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-select label variable; "All" matches every value."""
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "refresh": 2,
        "sort": 1,
        "type": "query",
    }


def dashboard() -> dict[str, Any]:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "Conveyor's api, queues, jobs and workers: "
        "is it healthy, and if not, where?",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": _layout(ROWS),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["conveyor"],
        "templating": {
            "list": [
                {
                    "current": {},
                    "hide": 0,
                    "label": "Data source",
                    "name": "datasource",
                    "query": "prometheus",
                    "refresh": 1,
                    "type": "datasource",
                },
                _variable("namespace", "Namespace", "label_values(conveyor_redis_up, namespace)"),
                _variable(
                    "queue",
                    "Queue",
                    'label_values(conveyor_queue_jobs{namespace=~"$namespace"}, queue)',
                ),
                _variable(
                    "job",
                    "Job",
                    'label_values(conveyor_jobs_enqueued_total{namespace=~"$namespace", '
                    'queue=~"$queue"}, job)',
                ),
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "Conveyor",
        "uid": "conveyor",
        "version": 1,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
