#!lua flags=no-writes
-- Depth of one queue by state, and the oldest ready job's due time.
-- arq keeps running jobs in the queue until they finish, so they are taken out
-- of "ready" here, as are due retries; the scan for the oldest ready job is
-- bounded by how many run.
--
-- KEYS: 1 queue, 2 in_progress index, 3 retrying index, 4 dead index, 5 paused flag
-- ARGV: 1 now ms
-- Returns {ready, deferred, in progress, retrying, dead, oldest ready-at ms or '',
--   paused-at ms or ''}
local due = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
local later = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local running = redis.call('ZCARD', KEYS[2])
local retrying = redis.call('ZCARD', KEYS[3])
local retrying_later = redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[1], '+inf')
local dead = redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[1], '+inf')
local oldest = ''
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  running + retrying + 1)
for i = 1, #rows, 2 do
  if not redis.call('ZSCORE', KEYS[2], rows[i]) and not redis.call('ZSCORE', KEYS[3], rows[i]) then
    oldest = rows[i + 1]
    break
  end
end
local ready = 0
if oldest ~= '' then ready = math.max(due - running - (retrying - retrying_later), 1) end
return {ready, math.max(later - retrying_later, 0), running, retrying, dead, oldest,
  redis.call('GET', KEYS[5]) or ''}
