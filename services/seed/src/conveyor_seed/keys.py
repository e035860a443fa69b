"""The seed app's own Redis keys, beside Conveyor's (under the same prefix)."""

from conveyor_core.keys import PREFIX

# Every document key carries the digest's tag, `{stats}` (conveyor_core.keys):
# a document's processing is counted for the digest in the same script, and
# cleanup removes records and index entries together, each in one slot on a
# cluster. One shard holds every document's record: a seed app's volume.
# Hash per uploaded document: name, type, size, checksums and blob keys of its
# bytes and text (which live in the blob store), state, summary, times, job ids.
DOCUMENT_PREFIX = PREFIX + "{stats}:document:"
# Sorted set of document ids by the time their retention ends: what cleanup removes.
DOCUMENTS_BY_EXPIRY = PREFIX + "{stats}:documents:expiry"
# String per mail sent: its Message-ID, so a retried email job never sends twice.
MAIL_SENT_PREFIX = PREFIX + "mail:sent:"
# String per blob prefix the cleanup sweeps for orphans: the key it resumes after.
BLOB_SWEEP_CURSOR_PREFIX = PREFIX + "blob-sweep-cursor:"
# The digest's count of processed documents, a field of conveyor_core.stats.COUNTS_KEY.
DOCUMENTS_PROCESSED = "documents:processed"


def document_key(document_id: str) -> str:
    return DOCUMENT_PREFIX + document_id


def mail_sent_key(mail_key: str) -> str:
    return MAIL_SENT_PREFIX + mail_key


def blob_sweep_cursor_key(blob_prefix: str) -> str:
    return BLOB_SWEEP_CURSOR_PREFIX + blob_prefix.rstrip("/")
