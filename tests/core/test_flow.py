"""Flow control's declarations: what the claim reads of a limited job and of a queue."""

import json

from conveyor_core.flow import Limits, Rate, claim_limits, flow_entry


def test_a_keyed_jobs_flow_entry_always_has_a_key() -> None:
    keyed = Limits(key="tenant_id")
    assert flow_entry("t", None, {"tenant_id": "a"}) == ""
    assert flow_entry("t", Limits(max_running=1), {"tenant_id": "a"}) == ""  # type from job data
    assert flow_entry("t", keyed, {"tenant_id": "a"}) == "t\na"
    assert flow_entry("t", keyed, {"tenant_id": 7}) == "t\n7"
    assert flow_entry("t", keyed, {"tenant_id": None}) == "t\nnull"
    assert flow_entry("t", keyed, {"tenant_id": ""}) == 't\n""'


def test_a_queues_limits_as_the_claim_reads_them() -> None:
    assert claim_limits([]) == ""
    limits = Limits(max_running=3, key="k", max_running_per_key=1, rate=Rate(60, 60))
    assert json.loads(claim_limits([("t", limits), ("keyed", Limits(key="k"))])) == {
        "t": {"n": 3, "kn": 1, "r": [60, 60_000], "k": 1},
        "keyed": {"k": 1},
    }
