-- Cancel a job. A waiting (or retry-pending) job leaves arq's queue at once and
-- never runs; a running one is asked to stop through arq's abort set, and its
-- worker records the cancellation when the job's task is cancelled.
--
-- KEYS: 1 job hash, 2 arq job key, 3 arq in-progress key, 4 arq abort set,
--       5 arq retry key, 6 queue
-- ARGV: 1 now ms, 2 index prefix, 3 events channel, 4 wake channel, 5 ttl s
-- Returns 'missing', the terminal state it was already in, 'cancelling' (asked to
-- stop) or 'cancelled_now'.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'complete' or state == 'dead' or state == 'cancelled' then return state end
local id = redis.call('HGET', KEYS[1], 'id')
local queue = redis.call('HGET', KEYS[1], 'queue')
if state == 'in_progress' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('ZADD', KEYS[4], ARGV[1], id)
  redis.call('PUBLISH', ARGV[4], 'abort')
  redis.call('PUBLISH', ARGV[3], cjson.encode({id = id, version = version}))
  return 'cancelling'
end
redis.call('ZREM', KEYS[6], id)
redis.call('DEL', KEYS[2], KEYS[5])
-- Claimed by a worker this very instant: arq drops it before it starts.
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('ZADD', KEYS[4], ARGV[1], id) end
for _, q in ipairs({queue, 'all'}) do
  redis.call('ZREM', ARGV[2] .. q .. ':' .. state, id)
  redis.call('ZADD', ARGV[2] .. q .. ':cancelled', ARGV[1], id)
end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at_ms', ARGV[1])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[3], cjson.encode({id = id, version = version}))
return 'cancelled_now'
