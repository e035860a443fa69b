#!lua flags=no-writes
--- @include "lib/scores"
-- Depth of one queue by state, and the oldest ready job's due time.
-- arq keeps running jobs in the queue until they finish, so they are taken out
-- of "ready" and "deferred" here (a running job's entry is due when its lock
-- lapses: lib/claim.lua), as are due retries; the scan for the oldest ready
-- job is bounded by how many run. Each priority is a band of scores (see
-- scores.py, queue_score): due and later are counted per band.
--
-- KEYS: 1 queue, 2 in_progress index, 3 retrying index, 4 dead index, 5 paused flag
-- ARGV: 1 now ms
-- Returns {ready, deferred, in progress, retrying, dead, oldest ready-at ms or '',
--   paused-at ms or ''}
local now = tonumber(ARGV[1])
local running = redis.call('ZCARD', KEYS[2])
local retrying = redis.call('ZCARD', KEYS[3])
local retrying_later = redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[1], '+inf')
local dead = redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[1], '+inf')
local due, later, oldest = 0, 0, nil
for p = K.highest_priority, K.lowest_priority do
  local base = band_base(p)
  local band_due = redis.call('ZCOUNT', KEYS[1], fmt(base), fmt(base + now))
  due = due + band_due
  later = later + redis.call('ZCOUNT', KEYS[1], '(' .. fmt(base + now), '(' .. fmt(base + K.band_ms))
  if band_due > 0 then
    local rows = redis.call('ZRANGEBYSCORE', KEYS[1], fmt(base), fmt(base + now), 'WITHSCORES',
      'LIMIT', 0, running + retrying + 1)
    for i = 1, #rows, 2 do
      if not redis.call('ZSCORE', KEYS[2], rows[i]) and not redis.call('ZSCORE', KEYS[3], rows[i]) then
        local at = tonumber(rows[i + 1]) - base
        if not oldest or at < oldest then oldest = at end
        break
      end
    end
  end
end
-- Where the running jobs' entries are: due (a lock that lapsed, or a job that
-- ran past its first lock) or later.
local running_due, running_later = 0, 0
local ids = running > 0 and redis.call('ZRANGE', KEYS[2], 0, -1) or {}
for i = 1, #ids, 1000 do
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids, i, math.min(i + 999, #ids)))
  for j = 1, #scores do
    local score = tonumber(scores[j])
    if score and score - band_base(priority_of(score)) <= now then
      running_due = running_due + 1
    elseif score then
      running_later = running_later + 1
    end
  end
end
local ready = 0
if oldest then ready = math.max(due - running_due - (retrying - retrying_later), 1) end
return {ready, math.max(later - retrying_later - running_later, 0), running, retrying, dead,
  oldest and fmt(oldest) or '', redis.call('GET', KEYS[5]) or ''}
