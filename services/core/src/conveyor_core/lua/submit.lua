#!lua
--- @include "lib/keys"
--- @include "lib/scores"
--- @include "lib/fairness"
--- @include "lib/history"
--- @include "lib/gcra"
--- @include "lib/debounce"
-- Create a job as arq's enqueue_job does (its job key and queue entry), with
-- the Idempotency-Key and the wake-up. An id whose job key exists is refused
-- ('duplicate', one SET NX); a finished job's job key has become arq's result
-- key (lib/arq_result.lua), so an id the caller chose (a scheduled run's,
-- which may come again) is also checked against that one. A random id needs
-- neither check. No record yet: the first claim makes it. Atomic: a failure
-- leaves nothing behind.
--
-- Every key is the queue shard's (one slot: keys.py): what is the caller's
-- (its quota of outstanding jobs) or another job's (a parent's record) is
-- written by calls of its own (store/lifecycle.py). The caller's request rate
-- is spent first, in the same step, when a limiter key is given (a single
-- node's, where one call may span slots; a cluster's is spent by a call of its
-- own before): a refused request writes nothing else.
-- A caller whose quota is full (ARGV[11]) still hears of the job its
-- Idempotency-Key or debounce key names; nothing is created for it.
-- A job of a limited type (flow.py) also gets its entry in the queue's flow
-- hash: its type and key, for the claim; a keyed one waits in its key's queue
-- too (see fair_enter).
--
-- KEYS: 1 arq job key, 2 arq result key or absent (a random id), 3 queue,
--       4 idempotency key or absent, 5 the queue's flow hash, 6 the debounce
--       key or absent (lib/debounce.lua), 7 the rate limiter key or absent;
--       absent: keys.absent, see `has`; then, declared (named here too, see
--       store/declared.py): the minute's history, and for a keyed job its
--       key's queue and its type's ring
-- ARGV: 1 job id, 2 arq job bytes, 3 score (priority band + ready-at ms),
--       4 arq expiry ms, 5 idempotency value, 6 idempotency ttl s, 7 wake channel,
--       8 flow entry or '', 9 job type (for the history), 10 now ms, 11 '1'
--       when the caller's quota of outstanding jobs is full, 12 debounce mode
--       ('keep-first', 'replace' or 'replace-delay'), 13 debounce window ms,
--       14 limiter interval us, 15 limiter burst
-- Returns {'created'}, {'duplicate'}, {'exists', idempotency value},
-- {'limited', retry after us}, {'over_quota'} or {'debounced', job id,
-- replaced '1' or '0'}.
if has(KEYS[7]) then
  local limit = gcra(KEYS[7], ARGV[14], ARGV[15])
  if limit[1] == 0 then return {'limited', limit[2]} end
end
if has(KEYS[4]) then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'exists', existing} end
end
if has(KEYS[6]) then
  local kept = debounce(KEYS[6], ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[10]), KEYS[3],
    KEYS[5], ARGV[2], ARGV[8])
  if kept then return kept end
end
if has(KEYS[2]) and redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate'} end
if ARGV[11] == '1' then return {'over_quota'} end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[4]) then return {'duplicate'} end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[8])
  fair_enter(KEYS[3], ARGV[8], ARGV[3], ARGV[1])
end
if has(KEYS[4]) then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6]) end
if has(KEYS[6]) then redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[13]) end
history(KEYS[3], tonumber(ARGV[10]), ARGV[9] .. ':enqueued', 1)
-- A deferred job only tells workers when it falls due (keys.py, DUE_MESSAGE).
local due = tonumber(ARGV[3]) - band_base(priority_of(ARGV[3]))
if due > tonumber(ARGV[10]) then redis.call('SPUBLISH', ARGV[7], 'due ' .. fmt(due))
else redis.call('SPUBLISH', ARGV[7], ARGV[1]) end
return {'created'}
