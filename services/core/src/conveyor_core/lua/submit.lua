#!lua
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
-- The caller's request rate is spent first, in the same step, when a limiter
-- key is given: a refused request writes nothing else. A job of a limited
-- type (flow.py) also gets its entry in the queue's flow hash: its type and
-- key, for the claim; a keyed one waits in its key's queue too (see fair_enter).
--
-- KEYS: 1 arq job key, 2 arq result key or '' (a random id), 3 queue, 4 idempotency key or '',
--       5 the queue's flow hash, 6 rate limiter key or '', 7 the parent job's
--       record or '' (a job enqueued by a running job: its workflow's parent
--       lists it as `child:{id}` = job type; the field goes with the parent),
--       8 the caller's outstanding jobs (a sorted set) or '' (no quota), 9 the
--       debounce key or '' (lib/debounce.lua)
-- ARGV: 1 job id, 2 arq job bytes, 3 score (priority band + ready-at ms),
--       4 arq expiry ms, 5 idempotency value, 6 idempotency ttl s, 7 wake channel,
--       8 flow entry or '', 9 limiter interval us, 10 limiter burst,
--       11 job type (for the parent's record and the history), 12 now ms,
--       13 the caller's quota of outstanding jobs, 14 how many of them a full
--       quota checks for ended jobs, 15 debounce mode ('keep-first', 'replace'
--       or 'replace-delay'), 16 debounce window ms
-- Returns {'created'}, {'duplicate'}, {'exists', idempotency value},
-- {'limited', retry after us}, {'over_quota'} or {'debounced', job id,
-- replaced '1' or '0'}.
if KEYS[6] ~= '' then
  local limit = gcra(KEYS[6], ARGV[9], ARGV[10])
  if limit[1] == 0 then return {'limited', limit[2]} end
end
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'exists', existing} end
end
if KEYS[9] ~= '' then
  local kept = debounce(KEYS[9], ARGV[15], tonumber(ARGV[16]), tonumber(ARGV[12]), KEYS[3],
    KEYS[5], ARGV[2], ARGV[8])
  if kept then return kept end
end
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate'} end
if KEYS[8] ~= '' and redis.call('ZCARD', KEYS[8]) >= tonumber(ARGV[13]) then
  -- Full: drop the ended (or gone) jobs among the least recently checked; one
  -- still outstanding goes to the back, so the next full submit checks others.
  -- Bounded: ARGV[14] jobs, two reads each (job keys are found by id).
  for _, id in ipairs(redis.call('ZRANGE', KEYS[8], 0, tonumber(ARGV[14]) - 1)) do
    local state = redis.call('HGET', K.job .. id, 'state')
    local ended
    if state then ended = state == 'complete' or state == 'dead' or state == 'cancelled'
    else ended = redis.call('EXISTS', K.arq_job .. id) == 0 end
    if ended then redis.call('ZREM', KEYS[8], id)
    else redis.call('ZADD', KEYS[8], ARGV[12], id) end
  end
  if redis.call('ZCARD', KEYS[8]) >= tonumber(ARGV[13]) then return {'over_quota'} end
end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[4]) then return {'duplicate'} end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[8])
  fair_enter(KEYS[3], ARGV[8], ARGV[3], ARGV[1])
end
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6]) end
if KEYS[9] ~= '' then redis.call('SET', KEYS[9], ARGV[1], 'PX', ARGV[16]) end
if KEYS[8] ~= '' then
  redis.call('ZADD', KEYS[8], ARGV[12], ARGV[1])
  -- The set lives at least as long as its newest job may wait to start.
  if redis.call('PTTL', KEYS[8]) < tonumber(ARGV[4]) then
    redis.call('PEXPIRE', KEYS[8], ARGV[4])
  end
end
if KEYS[7] ~= '' and redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('HSET', KEYS[7], 'child:' .. ARGV[1], ARGV[11])
end
history(KEYS[3], tonumber(ARGV[12]), ARGV[11] .. ':enqueued', 1)
-- A deferred job only tells workers when it falls due (keys.py, DUE_MESSAGE).
local due = tonumber(ARGV[3]) - band_base(priority_of(ARGV[3]))
if due > tonumber(ARGV[12]) then redis.call('PUBLISH', ARGV[7], 'due ' .. fmt(due))
else redis.call('PUBLISH', ARGV[7], ARGV[1]) end
return {'created'}
