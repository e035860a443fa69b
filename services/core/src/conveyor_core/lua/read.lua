#!lua flags=allow-oom
--- @include "lib/keys"
--- @include "lib/gcra"
-- One job as a caller reads it, after spending one request of the caller's
-- rate (when a limiter key is given): one call, where a pipeline of a dozen
-- commands cost the api more to pack and parse than the whole bare read.
-- allow-oom: the limiter's one small key is rewritten in place, and a full
-- Redis must still answer reads.
--
-- KEYS: 1 rate limiter key or '', 2 the job's record, 3 arq's job key, 4 arq's
--       result key (a finished job's payload and result: lib/arq_result.lua)
-- ARGV: 1 limiter interval us, 2 limiter burst, 3 job id, 4... the catalog's
--       queues (where a waiting job, which has no record yet, is looked for)
-- Returns {0, retry after us} when the rate refuses it, else {1, record as
-- field, value, ..., arq job bytes (else result bytes) or nil, queue or nil, score or nil (a
-- waiting job's), 1 when that queue is paused else 0}.
if KEYS[1] ~= '' then
  local limit = gcra(KEYS[1], ARGV[1], ARGV[2])
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
  for i = 4, #ARGV do
    score = redis.call('ZSCORE', ARGV[i], ARGV[3])
    if score then where = ARGV[i]; break end
  end
end
local paused = 0
if where then paused = redis.call('EXISTS', qkey(where, 'paused')) end
return {1, record, job, where, score, paused}
