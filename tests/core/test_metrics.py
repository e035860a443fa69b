"""A job's series written through their values (metrics.increment, metrics.Observer)
export what the metrics' own inc() and observe() export."""

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from conveyor_core.metrics import DURATION_BUCKETS_S, Observer, increment

TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}


def exposition(registry: CollectorRegistry) -> list[str]:
    """The OpenMetrics lines, exemplars' timestamps and the series' creation left out."""
    lines = generate_latest(registry).decode().splitlines()  # type: ignore[no-untyped-call]
    return [
        line.rsplit(" ", 1)[0] if " # {" in line else line
        for line in lines
        if "_created{" not in line
    ]


def test_observer_and_increment_export_what_observe_and_inc_export() -> None:
    # Every bucket's edge, between two edges, zero, and past the last one.
    amounts = [0.0, *DURATION_BUCKETS_S, 0.007, 0.3, 7.5, 1000.0]
    made = []
    for fast in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram(
            "t_seconds", "t", ["job"], buckets=DURATION_BUCKETS_S, registry=registry
        )
        counter = Counter("t_total", "t", ["job"], registry=registry)
        child, count = histogram.labels("noop"), counter.labels("noop")
        observe = Observer(child).observe if fast else child.observe
        inc = increment(count) if fast else count.inc
        for n, amount in enumerate(amounts):
            observe(amount, TRACE if n % 2 else None)
            inc(1)
        made.append(exposition(registry))
    assert made[1] == made[0]
    assert any("trace_id" in line for line in made[1])
    assert 't_total{job="noop"} ' + f"{len(amounts)}.0" in made[1]
