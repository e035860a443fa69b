#!lua flags=allow-oom
--- @include "lib/keys"
--- @include "lib/gcra"
-- One job as a caller reads it, after spending one request of the caller's
-- rate (when a limiter key is given: a single node's; a cluster's limiter is
-- in a slot of its own, spent by a call of its own before): one call, where a
-- pipeline of a dozen commands cost the api more to pack and parse than the
-- whole bare read. allow-oom: the limiter's one small key is rewritten in
-- place, and a full Redis must still answer reads.
--
-- KEYS: 1 the rate limiter key or absent (keys.absent), 2 the job's record,
--       3 arq's job key, 4 arq's result key (a finished job's payload and
--       result: lib/arq_result.lua), then per queue where a
--       waiting job (which has no record yet) may be: the queue and its paused
--       flag. An id that names its queue shard (keys.job_id_for) is looked
--       for there alone; an id with no tag (a bare arq client's), in every
--       queue of the catalog (on a single node only: they span slots).
-- ARGV: 1 job id, 2 limiter interval us, 3 limiter burst
-- Returns {1, record, job, queue or false, score or false, paused 1/0}, or
-- {0, retry after us} when the caller's rate refuses the read.
if has(KEYS[1]) then
  local limit = gcra(KEYS[1], ARGV[2], ARGV[3])
  if limit[1] == 0 then return {0, limit[2]} end
end
local record = redis.call('HGETALL', KEYS[2])
local job = redis.call('GET', KEYS[3])
if not job then job = redis.call('GET', KEYS[4]) end
local where, score = false, false
for i = 1, #record, 2 do
  if record[i] == 'queue' then where = record[i + 1] end
end
if #record == 0 then
  for i = 5, #KEYS, 2 do
    score = redis.call('ZSCORE', KEYS[i], ARGV[1])
    if score then where = KEYS[i]; break end
  end
end
local paused = 0
for i = 5, #KEYS, 2 do
  if KEYS[i] == where then paused = redis.call('EXISTS', KEYS[i + 1]) end
end
return {1, record, job, where, score, paused}
