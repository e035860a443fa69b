-- Depth of one queue by state, and the oldest ready job's ready time.
-- arq keeps running jobs in the queue until they finish, so they are taken out
-- of "ready" here; the scan for the oldest ready job is bounded by how many run.
--
-- KEYS: 1 queue, 2 the queue's in_progress index, 3 the queue's dead index
-- ARGV: 1 now ms
-- Returns {ready, deferred, in progress, dead, oldest ready-at ms or ''}
local due = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
local deferred = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local running = redis.call('ZCARD', KEYS[2])
local dead = redis.call('ZCARD', KEYS[3])
local oldest = ''
local batch = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, running + 1)
for i = 1, #batch, 2 do
  if not redis.call('ZSCORE', KEYS[2], batch[i]) then
    oldest = batch[i + 1]
    break
  end
end
local ready = 0
if oldest ~= '' then ready = math.max(due - running, 1) end
return {ready, deferred, running, dead, oldest}
