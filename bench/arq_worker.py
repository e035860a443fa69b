"""A bare arq worker running the no-op job: `python -m bench.arq_worker QUEUE POLL_DELAY_S`."""

import sys
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func, run_worker

from bench.jobs import arq_noop


def main() -> None:
    queue, poll_delay_s, redis_url = sys.argv[1], float(sys.argv[2]), sys.argv[3]

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["queue"] = queue

    run_worker(
        {
            # One try per job, as Conveyor's no-op job type has (bench/jobs.py).
            "functions": [func(arq_noop, name="noop", max_tries=1)],
            "queue_name": queue,
            "poll_delay": poll_delay_s,
            "redis_settings": RedisSettings.from_dsn(redis_url),
            "on_startup": startup,
            "log_results": False,
        }
    )


if __name__ == "__main__":
    main()
