"""Conveyor's own Redis keys, next to arq's (`arq:job:`, `arq:result:`,
`arq:in-progress:`, `arq:abort`, and each queue's sorted set).

arq's layout is kept as it is, so bare arq clients still enqueue. A running
job's lock (`arq:in-progress:`) holds its try's token (fencing.py); arq's
retry counter (`arq:retry:`) is not used: tries live in the job's hash.
A waiting job is only arq's: its job key (payload,
trace context) and its entry in the queue's sorted set. Conveyor adds the rest
of a job's life: a small hash from its first claim on (state, tries, times,
progress, the last error), per-queue indexes by state, idempotency, wake-ups
and change notices, per-minute history and the digest's counts. Job modules keep keys of their
own under the same prefix (the seed app's documents and sent-mail marks).

Slots: one call, one slot (Redis Cluster)
-----------------------------------------

A queue's name is the hash tag of everything of the queue's: arq's queue
key is the bare name (`arq:queue`: a key with no braces hashes whole, so it
lands where `{arq:queue}` does), Conveyor's per-queue keys carry it as
`conveyor:{queue}:...` (indexes, flow hash, holds, running counts, key rings,
history, paused flag, idempotency and debounce records), and a job's id
starts with it: `{queue}` then 32 hex digits (`job_id_for`; a scheduled
run's, `{queue}type:ms`). So `arq:job:{id}`, `arq:in-progress:{id}`,
`arq:result:{id}` and `conveyor:job:{id}` hash to the queue's slot, and a
script about a job, or about the jobs it finds in its queue, stays in one
slot. On a single node the tag changes nothing. An id with no tag (a bare
arq client's, or one from before ids carried it) still works on a single
node; on a cluster its keys land on slots of their own, so a bare arq
enqueue is not supported there (docs/how-to/redis-cluster.md).

Audit: what each call touches (`lua/`). A call passes in KEYS every key it
touches that its caller can know, also those its script names itself
(store/declared.py); "derived" keys are built in Lua from a declared queue
and the ids or flow entries found in it, so they share its slot by the
layout above, and tests/core/test_script_keys.py lists each with its reason
(a server that refuses undeclared keys needs them allowed):

- submit.lua: a job's arq job and result keys, its queue, flow hash,
  idempotency and debounce records, the minute's history, a keyed job's
  key queue and ring (all the queue's slot); derived: the kept job's keys
  (debounce). The caller's rate limiter (per api key) is spent in the same
  call on a single node only; on a cluster by rate_limit.lua first. The
  caller's quota of outstanding jobs (per api key) is quota.lua's, a call
  of its own before the submit (it used to read jobs of every slot inside
  the submit); a parent's record gets its child by link.lua after.
- claim.lua, finish.lua (finish and fetch), settle.lua, cancel.lua,
  requeue.lua, bulk.lua: the queue and its flags declared, the queue's
  indexes, flow and waiting hashes, a limited type's running count, hold
  and ring and the marks' flag (the claim: of every limited type of the
  queue, and their start logs), and but for the claim the given jobs' keys
  and the minute's history; derived: the claimed jobs' keys, and a job's
  fairness key's flow keys, all in the queue's slot. A job of a group also
  counts in its group (lib/group.lua): the group's hash is
  `conveyor:group:{group id}`, whose id on a cluster carries its members'
  queue shard tag, so it is in their slot (below); a member's end declares
  it, and its group's continuations' arq job keys and outbox.
- renew.lua: per try its record and lock, declared; one call per queue on
  a cluster. read.lua: the job's record, arq keys, its queue and paused
  flag (the limiter as for submit); an id with no tag is looked for in
  every queue of the catalog (a single node only). progress.lua,
  checkpoint.lua: the job's record. page.lua, trim.lua: one index.
  queue_stats.lua, pause.lua: the queue's keys. rate_limit.lua: one limiter.
  stats_take.lua: the digest's keys, all under the `{stats}` tag.
- group_create.lua, group_cancel.lua: the group's hash (on a cluster
  `{shard}g...`: in its members' shard's slot), an outer group's hash (a hand-over joins the
  outer group's shard) and the creating job's record when it is in the same
  slot (else link.lua, a call of its own). group_submit.lua: the
  members of a chunk, `{group id}.{index}`, in the group's shard, their
  queues' keys (declared), and the caller's quota on one node (on a
  cluster a ZADD of its own). A
  continuation of another slot: the group's shard's outbox, in its slot
  (group_outbox.lua), then group_continue.lua in the continuation's slot.
  On one node group ids keep their untagged shape (`g...`, group_ids.py).
- Outside Lua: history, stats and listings read per queue with
  non-transactional pipelines (a cluster splits them per node); the
  listing's page script is called once per queue on a cluster (a cluster
  pipeline takes no scripts); bulk deletes of idempotency records are split
  per slot by the cluster client, and the worker registry reads its cards
  with one MGET per slot (workers.py); the seed app's document keys carry
  the `{stats}` tag, so its scripts bump `STATS_PENDING` in their slot.

Shards: a queue may span several hash tags (`shards` on its catalog
`Queue`). Shard 0 is the queue's own name, so a queue of one shard keeps
exactly the layout above; shard i > 0 is named `queue~i` (a `~` no queue
name holds), a queue of its own in every key above: its arq sorted set, its
`conveyor:{queue~i}:...` keys, its jobs' ids `{queue~i}<32 hex>`. Each shard
is one slot, so every script keeps to one slot as before; what spans a
queue's shards (listing, statistics, history, pause, bulk) is one call per
shard.

Pub/sub: a queue's wake-ups are sharded (`SPUBLISH` on `conveyor:{queue}:wake`,
its slot), heard by workers through shardpubsub.py on one node and on a
cluster alike. Events per job and per group are sharded too (`SPUBLISH` on
`conveyor:events:{id}`: a job's channel is in its queue's slot, by its id's
tag), heard by the api through shardpubsub.py's `ShardChannels`, one
connection per slot it watches.
"""

from uuid import uuid4

PREFIX = "conveyor:"

# arq drops a job nobody started within this long after it was due.
ARQ_EXPIRY_EXTRA_MS = 86_400_000

# Hash per job, from its first claim (or its cancellation while waiting) on:
# state, version, tries, times, progress, the last error, the last checkpoint
# of a long job (checkpoint.py, a few KiB at most). Its payload is in
# arq's job key; once it finished, in arq's result key with its result (or a
# dead job's error), which lives exactly as long as the hash.
JOB_PREFIX = PREFIX + "job:"
# Sorted sets of job ids per queue and state: `conveyor:{queue}:in_progress`
# (by start time), `:retrying` (by next try time), and `:complete`, `:dead`
# (the dead letters), `:cancelled`, each by the time its record expires, so
# housekeeping trims expired entries from the front. Waiting jobs need no
# index: arq's queue holds them by due time.
INDEXED_STATES = ("in_progress", "retrying", "complete", "dead", "cancelled")
# Idempotency-Key -> "job id, payload fingerprint", per job type and per api
# key that submitted it, so one key can neither reach nor detect another's
# jobs through it (a job enqueued with no api key: per job type only).
IDEMPOTENCY_SUFFIX = "idempotency:"
# Debounce key -> the id of the job its window keeps (enqueue.py, Debounce),
# per job type and api key as an Idempotency-Key is, expiring with the window.
DEBOUNCE_SUFFIX = "debounce:"
# Hash per group (groups.py, lua/lib/group.lua): its total, the members not yet
# counted (`remaining`), the dead and cancelled ones, its policy and state, the
# member that failed it and why, who created it, and its continuations as they
# will be enqueued (job id, queue, priority, flow entry, arq job bytes, when),
# and for hand-overs (groups.py) the place it took over (`hands_to`) and its
# own places handed over (`handed`, and `handed:{index}` = the continuation).
# Members are jobs named `{group id}.{index}`: the id says a job's group and
# its place, so a group keeps no list of members. Lives GROUP_OPEN_S while its
# members run (re-armed when a requeue re-opens it), GROUP_KEEP_S once finished.
# Its changes are announced on its events channel (group_events_channel, in
# its hash's slot).
GROUP_PREFIX = PREFIX + "group:"
GROUP_OPEN_S = 7 * 86_400
GROUP_KEEP_S = 7 * 86_400
# Sorted set per queue shard, on a cluster only (`conveyor:{shard}:outbox`):
# continuations of groups of the shard that join another slot, as
# "{group id}\n{n}", scored by when they may be taken (now, or a taker's
# lease's end). The last member's end adds one and says OUTBOX_MESSAGE on the
# shard's wake-up channel; a worker of the shard starts it in its own slot and
# removes it (lua/group_outbox.lua, group_continue.lua).
OUTBOX_SUFFIX = "outbox"
OUTBOX_MESSAGE = b"outbox"
# Sharded pub/sub per job (SPUBLISH): its version on every change, for SSE
# streams. A channel per job, so an api replica hears only the jobs its
# streams watch; in the job's slot, so a cluster sends it to that shard only.
EVENTS_PREFIX = PREFIX + "events:"
# Sharded pub/sub per queue (SPUBLISH, `conveyor:{queue}:wake`, in the
# queue's slot: a cluster sends it to the queue's nodes only): "there may be
# work" (a job id), sent on enqueue and
# requeue, or ABORT_MESSAGE when a running job is to be cancelled, or
# DUE_MESSAGE and a due time (ms) when a deferred job was enqueued: a worker
# then only sets its timer, and claims nothing before the job falls due.
ABORT_MESSAGE = b"abort"
DUE_MESSAGE = b"due "
# Sorted set per api key with a quota of outstanding jobs (its name): ids of
# the jobs it submitted that may not have ended, scored by when each was last
# checked. The submit script adds to it and, when it is full, drops the ended
# jobs among the least recently checked, a bounded number per call.
OUTSTANDING_PREFIX = PREFIX + "outstanding:"
# GCRA state per api key (its name): when the key's next request is "due".
RATE_LIMIT_PREFIX = PREFIX + "ratelimit:"
# String per paused queue: when it was paused (ms). The claim reads it once per
# call and starts nothing while it exists; resume deletes it and wakes workers.
PAUSED_SUFFIX = "paused"
# Flow control (flow.py), per queue, only for job types with limits:
# a hash of queued job id -> "job type\nkey" for types with a key (the claim
# reads a job's type from its job data), written at submit, removed when the
# job ends; running counts per type (`running-count:{type}`) and per key
# (`running-count-key:{type}:{key}`), strings written by the claim and by the
# transition out of in_progress (once per call, summed: lua/lib/flow.lua),
# gone at 0, and self-healing: at a limit, at most once per lock ttl
# (`running-checked`, expiring), the claim stops counting running jobs whose
# lock lapsed (a dead worker's); a job's record says what it counts in
# (`counted`); the marks' flag (`waiting-marked`), a string that exists while
# the waiting hash below may hold marks, so the end of a try reads them only
# then; lists of recent start times, oldest first, per type
# (`start-log:{type}`) and per key (`start-log-key:{type}:{key}`), the
# sliding window of a rate, expiring with it; the holds: a hash of what the
# claim found held (type, or "type\nkey" -> limit or rate), read to say why a
# job is held (`waiting_reason`) and to wake workers when a held type frees a
# slot (its Redis name, `waiting`, predates the word); and for types with a
# key, so that keys take turns: each key's queued jobs (`keyq:{type}:{key}`,
# scored as in arq's queue) and a list of the keys with queued jobs
# (`ring:{type}`), which the claim rotates. Each goes when empty.
# A hold (snooze.py, RateLimited): a string per held type (`hold:{type}`) or
# key (`hold-key:{type}:{key}`), expiring when the hold ends; the claim starts
# no job of it meanwhile.
FLOW_SUFFIX = "flow"
HELD_SUFFIX = "waiting"
# List of mails caught by `make run`'s local mail catcher (local/mail_catcher.py),
# newest first, bounded and expiring; never written in production.
CAUGHT_MAIL_KEY = PREFIX + "dev:caught-mail"
# Lock per queue so that one worker at a time trims expired index entries.
HOUSEKEEPING_LOCK_SUFFIX = "housekeeping"
# Hash of a job module's own counts since they were last taken (stats.py):
# `{name}:{event}`, bumped in the module's own scripts. Job outcomes are not
# counted here: a take reads them from the per-minute history.
STATS_PENDING = PREFIX + "{stats}:pending"
# Where the last take of counts stopped: the history minute it read last and
# that minute's outcome counts as it read them (JSON), expiring with the history.
STATS_TAKEN = PREFIX + "{stats}:taken"
# The counts one run took over (the module counts renamed from STATS_PENDING,
# plus the job outcomes), by the taking job's id, so a retried run reports the
# same numbers.
STATS_DIGEST_PREFIX = PREFIX + "{stats}:digest:"
# Hash per bulk action (the api's bulk.py): action, filter, who, state,
# counts and the cursor it has reached, so it can be resumed; kept a week.
BULK_PREFIX = PREFIX + "bulk:"
# Lock per running bulk action (with a short TTL, refreshed per batch), so one
# api process at a time runs it.
BULK_LOCK_PREFIX = PREFIX + "bulk-lock:"
# Sorted set of bulk actions not finished yet (by start ms): what a starting
# api resumes.
BULK_RUNNING = PREFIX + "bulk:running"
# Lock per api key (its name) while it runs a bulk preview, expiring with the
# preview's time limit: one preview at a time per key, across replicas.
PREVIEW_LOCK_PREFIX = PREFIX + "preview-lock:"
# A live worker process's card (workers.py), expiring unless renewed, and a
# sorted set of worker names by when each was last heard from.
WORKER_PREFIX = PREFIX + "worker:"
WORKERS = PREFIX + "workers"
# Stream of operator actions (who, what, filter, how many, when), capped at
# about AUDIT_MAX_ENTRIES entries.
AUDIT_LOG = PREFIX + "audit"
# Hash of the function libraries (functions.py) processes run, by name, and
# when one last said it uses it (ms): a worker's housekeeping deletes those
# unused for long, each version leaving its own behind.
FUNCTION_LIBRARIES_SEEN = PREFIX + "function-libraries"
# Lock so that one worker at a time deletes unused function libraries.
FUNCTION_LIBRARIES_LOCK = PREFIX + "function-libraries-lock"


# A key a script is given in place of one the call has none of (no
# Idempotency-Key, no debounce key...): in the call's slot, so a cluster routes
# the call by its real keys, and never written (lua/lib/keys.lua, `has`). Its
# last byte is NUL, which no key Conveyor names ends with.
ABSENT_SUFFIX = ":absent\x00"


# Between a queue's name and a shard's number (shard_name): no queue name holds it.
SHARD_SEPARATOR = "~"


def shard_name(queue: str, index: int) -> str:
    """The name of shard `index` of `queue`: the queue's own name for shard 0
    (a queue of one shard keeps today's keys), `queue~index` for the others."""
    return queue if index == 0 else f"{queue}{SHARD_SEPARATOR}{index}"


def shard_names(queue: str, shards: int) -> list[str]:
    """Every shard of a queue of `shards` shards, shard 0 first."""
    return [shard_name(queue, index) for index in range(shards)]


def queue_of_shard(shard: str) -> str:
    """The queue a shard belongs to (a shard's name without its number)."""
    return shard.partition(SHARD_SEPARATOR)[0]


def job_id_for(queue: str, suffix: str | None = None) -> str:
    """A new job id on the queue shard `queue`: its tag, then `suffix` (a
    scheduled run's, which is the same on every replica) or 32 random hex
    digits. The id says where its job lives: `arq:job:{id}` and the others
    hash to the queue's slot (see the module's docstring)."""
    return f"{{{queue}}}{uuid4().hex if suffix is None else suffix}"


def queue_of(job_id: str) -> str | None:
    """The queue shard a job id names (`job_id_for`), or None for an id with
    no tag: one a caller chose, or a bare arq client's."""
    if not job_id.startswith("{"):
        return None
    end = job_id.find("}", 1)
    return job_id[1:end] if end > 1 else None


def absent(beside: str) -> str:
    """The stand-in for a key a call has none of (ABSENT_SUFFIX), in the slot
    of the key `beside` (a queue's, a group's): its hash tag, or the whole
    key as one (a key with no tag hashes whole)."""
    start = beside.find("{")
    end = beside.find("}", start + 1) if start >= 0 else -1
    tag = beside[start + 1 : end] if end > start + 1 else beside
    return f"{{{tag}}}{ABSENT_SUFFIX}"


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def queue_key(queue: str, name: str) -> str:
    """A key of one queue's, in the queue's hash slot."""
    return f"{PREFIX}{{{queue}}}:{name}"


def index_key(queue: str, state: str) -> str:
    return queue_key(queue, state)


def paused_key(queue: str) -> str:
    return queue_key(queue, PAUSED_SUFFIX)


def index_keys(queue: str) -> list[str]:
    """Every index of a queue (INDEXED_STATES): what a script declares when the
    state it moves a job from is the record's, read inside the call."""
    return [index_key(queue, state) for state in INDEXED_STATES]


# Flow control's keys per job type and fairness key (FLOW_SUFFIX's comment), as
# lua/lib/keys.lua names them: declared by the calls that touch them.
def running_count_key(queue: str, job_type: str) -> str:
    return queue_key(queue, f"running-count:{job_type}")


def start_log_key(queue: str, job_type: str) -> str:
    return queue_key(queue, f"start-log:{job_type}")


def running_checked_key(queue: str) -> str:
    """Set when the claim last looked for running jobs whose lock lapsed (once per lock ttl)."""
    return queue_key(queue, "running-checked")


def marked_key(queue: str) -> str:
    """The marks' flag: exists while the waiting hash (HELD_SUFFIX) may hold marks."""
    return queue_key(queue, "waiting-marked")


def hold_key(queue: str, job_type: str) -> str:
    return queue_key(queue, f"hold:{job_type}")


def ring_key(queue: str, job_type: str) -> str:
    return queue_key(queue, f"ring:{job_type}")


def key_queue_key(queue: str, job_type: str, key: str) -> str:
    return queue_key(queue, f"keyq:{job_type}:{key}")


def events_channel(job_id: str) -> str:
    return EVENTS_PREFIX + job_id


def group_events_channel(group_id: str) -> str:
    """A group's sharded events channel, in its hash's slot: its id's tag (the
    queue shard of its members), or for an untagged id the hash's name as one."""
    if group_id.startswith("{"):
        return EVENTS_PREFIX + "group:" + group_id
    return EVENTS_PREFIX + "{" + group_key(group_id) + "}"


def outbox_key(shard: str) -> str:
    """A queue shard's outbox of continuations to start in another slot (OUTBOX_SUFFIX)."""
    return queue_key(shard, OUTBOX_SUFFIX)


def group_key(group_id: str) -> str:
    return GROUP_PREFIX + group_id


def idempotency_key(queue: str, job_type: str, key: str, submitted_by: str | None = None) -> str:
    """The key's record for this job type, and for the api key that used it (a
    name has no `/`, a job type neither, so no scope can pose as another), in
    the slot of the queue shard its jobs go to."""
    scope = f"{submitted_by}/" if submitted_by else ""
    return queue_key(queue, f"{IDEMPOTENCY_SUFFIX}{scope}{job_type}:{key}")


def debounce_key(queue: str, job_type: str, key: str, submitted_by: str | None = None) -> str:
    """A debounce key's record for this job type and api key (as idempotency_key)."""
    scope = f"{submitted_by}/" if submitted_by else ""
    return queue_key(queue, f"{DEBOUNCE_SUFFIX}{scope}{job_type}:{key}")


def outstanding_key(api_key_name: str) -> str:
    return OUTSTANDING_PREFIX + api_key_name


def wake_channel(queue: str) -> str:
    return queue_key(queue, "wake")


def stats_digest_key(job_id: str) -> str:
    return STATS_DIGEST_PREFIX + job_id


def rate_limit_key(subject: str) -> str:
    return RATE_LIMIT_PREFIX + subject


def bulk_key(bulk_id: str) -> str:
    return BULK_PREFIX + bulk_id


def bulk_lock_key(bulk_id: str) -> str:
    return BULK_LOCK_PREFIX + bulk_id


def preview_lock_key(key_name: str) -> str:
    return PREVIEW_LOCK_PREFIX + key_name


def worker_key(name: str) -> str:
    return WORKER_PREFIX + name
