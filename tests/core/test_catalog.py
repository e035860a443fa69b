"""The job catalog: retry policy arithmetic, declarations, extra job modules."""

import random
import re
import sys

import pytest
from pydantic import BaseModel

from conveyor_core import Schedule
from conveyor_core.catalog import (
    Catalog,
    JobModuleError,
    JobType,
    PermanentJobError,
    RetryPolicy,
    UnknownJobTypeError,
    load_catalog,
)
from conveyor_core.flow import Limits, Rate
from conveyor_seed import CREATE_TASK, CreateTask
from tests.support import jobs


def test_backoff_grows_exponentially_within_equal_jitter_bounds() -> None:
    policy = RetryPolicy(backoff_base_s=1, backoff_cap_s=10)
    rng = random.Random(7)
    for job_try, ceiling_s in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        for _ in range(50):
            delay_s = policy.backoff_s(job_try, rng)
            assert ceiling_s / 2 <= delay_s <= ceiling_s


def test_backoff_spreads_jobs_that_failed_together() -> None:
    policy = RetryPolicy(backoff_base_s=1, backoff_cap_s=60)
    rng = random.Random(1)
    assert len({round(policy.backoff_s(4, rng), 3) for _ in range(20)}) > 10


def test_permanent_errors() -> None:
    policy = RetryPolicy(permanent_errors=(KeyError,))
    assert policy.is_permanent(PermanentJobError("no"))
    assert policy.is_permanent(KeyError("k"))
    assert not policy.is_permanent(RuntimeError("maybe next time"))


@pytest.mark.parametrize(
    "options", [{"max_tries": 0}, {"backoff_base_s": -1}, {"backoff_cap_s": -1}]
)
def test_nonsense_policies_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_catalog_lookup_and_queues() -> None:
    catalog = load_catalog(jobs.MODULES.split(","))
    assert catalog["create_task"] is CREATE_TASK
    assert "flaky" in catalog
    assert catalog.queues() == [CREATE_TASK.queue]
    with pytest.raises(UnknownJobTypeError):
        catalog["nope"]


def test_a_job_type_is_declared_once() -> None:
    with pytest.raises(ValueError, match="'create_task' is declared twice"):
        Catalog([CREATE_TASK, CREATE_TASK])


def test_a_job_module_must_declare_job_types() -> None:
    with pytest.raises(ValueError, match=r"job module 'tests\.support': has no JOB_TYPES"):
        load_catalog(["tests.support"])


@pytest.mark.parametrize(
    ("module", "problem"),
    [
        ("tests.support.broken.import_error", "import failed: ModuleNotFoundError"),
        ("tests.support.broken.duplicate", "job type 'flaky' is declared twice"),
        ("tests.support.broken.bad_schedule", "InvalidScheduleError: hour must be in 0..23"),
    ],
)
def test_a_bad_job_module_is_named_with_its_problem(module: str, problem: str) -> None:
    with pytest.raises(JobModuleError) as error:
        load_catalog([jobs.MODULE, module])
    assert error.value.module == module
    assert str(error.value).startswith(f"job module {module!r}: ")
    assert problem in str(error.value)


def test_job_modules_add_resources_and_api_routers() -> None:
    catalog = load_catalog(jobs.MODULES.split(","))
    assert [r.name for r in catalog.resources] == ["seed_workflow", "test_ledger"]
    assert catalog.resource_modules["test_ledger"] == jobs.MODULE
    assert "conveyor_seed.routes_tutorial:router" in catalog.api_routers


def test_schedules_are_a_tuple_even_when_one_is_given() -> None:
    job_type = JobType("t", jobs.Nothing, "m:f", schedules=Schedule(minute=5))  # type: ignore[arg-type]
    assert job_type.schedules == (Schedule(minute=5),)
    with pytest.raises(ValueError, match=r"not 'package\.module:function'"):
        JobType("t", jobs.Nothing, "no_colon")
    with pytest.raises(ValueError, match="job type name"):
        JobType("has space", jobs.Nothing, "m:f")


def test_a_module_whose_settings_are_invalid_is_reported_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_DIGEST_SCHEDULE", '{"hour": 25}')
    monkeypatch.delitem(sys.modules, "conveyor_seed", raising=False)
    with pytest.raises(JobModuleError) as error:
        load_catalog(["conveyor_seed"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("job module 'conveyor_seed': import failed: ValidationError: ")
    assert "CONVEYOR_DIGEST_SCHEDULE: hour must be in 0..23, not 25" in message


def test_a_job_type_refuses_a_priority_outside_0_to_9() -> None:
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="job type 'x': priority must be 0"):
            JobType("x", CreateTask, "m:f", priority=bad)


def test_a_job_type_refuses_limits_that_cannot_work_naming_it() -> None:
    class Keyed(BaseModel):
        tenant_id: str
        note: str | None = None

    cases = {
        "max_running must be a positive integer, not 0": Limits(max_running=0),
        "max_running_per_key must be a positive integer, not 1.5": Limits(
            key="tenant_id",
            max_running_per_key=1.5,  # type: ignore[arg-type]
        ),
        "rate.starts must be a positive integer, not -1": Limits(rate=Rate(-1)),
        "rate_per_key.per_s must be a positive number of seconds, not 0": Limits(
            key="tenant_id", rate_per_key=Rate(5, 0)
        ),
        "a per-key limit needs `key`": Limits(max_running_per_key=1),
        "key 'tenant' is not a field of Keyed": Limits(key="tenant"),
        "key 'note' must be a required field of Keyed": Limits(key="note"),
    }
    for message, limits in cases.items():
        with pytest.raises(ValueError, match=re.escape(f"job type 'x': {message}")):
            JobType("x", Keyed, "m:f", limits=limits)
    JobType("x", Keyed, "m:f", limits=Limits(key="tenant_id", max_running_per_key=2))
