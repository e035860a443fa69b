"""Claim-check's pieces without a worker: references, and a store that cannot be opened."""

import pytest

from conveyor_core.blobs import BlobRef, BlobSettings
from conveyor_core.catalog import RetryPolicy
from conveyor_core.claimcheck import (
    NoBlobStoreError,
    as_reference,
    open_blob_store,
    payload_blob_key,
    reference_of,
    resolve_payload,
)

REF = BlobRef("file", payload_blob_key("job-1"), 10, "0" * 64)


def test_a_reference_is_told_from_an_inline_value() -> None:
    assert reference_of(as_reference(REF)) == REF
    assert reference_of({"data": "x"}) is None
    assert reference_of({**as_reference(REF), "more": 1}) is None  # not only the reference
    assert reference_of({"__conveyor_blob__": {"key": "no size"}}) is None


def test_a_reference_counts_only_for_its_own_job() -> None:
    assert reference_of(as_reference(REF), "job-1") == REF
    assert reference_of(as_reference(REF), "job-2") is None
    # A job id that only begins like another's is not that job.
    assert reference_of(as_reference(REF), "job-") is None


def test_a_folder_that_cannot_be_made_leaves_the_service_without_a_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert open_blob_store(BlobSettings(url="file:///proc/conveyor-blobs")) is None
    assert "no blob store" in caplog.text


async def test_an_offloaded_payload_without_a_store_is_retried_not_dead() -> None:
    with pytest.raises(NoBlobStoreError, match="CONVEYOR_BLOBS_URL") as raised:
        await resolve_payload(None, as_reference(REF), "job-1")
    assert not RetryPolicy().is_permanent(raised.value)
    assert await resolve_payload(None, {"data": "x"}, "job-1") == {"data": "x"}
