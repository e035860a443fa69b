-- Put a dead job back on its queue under the same id: a new try, same payload.
--
-- KEYS: 1 job hash, 2 arq job key, 3 arq result key, 4 arq retry key, 5 queue
-- ARGV: 1 now ms, 2 arq job bytes, 3 arq expiry ms, 4 index prefix,
--       5 events channel, 6 wake channel
-- Returns {'missing'}, {state it was in} when not dead, or {'requeued', the
-- record as requeued}: a worker may start it the next moment.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'dead' then return {state} end
local id = redis.call('HGET', KEYS[1], 'id')
local queue = redis.call('HGET', KEYS[1], 'queue')
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('PSETEX', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[1], id)
for _, q in ipairs({queue, 'all'}) do
  redis.call('ZREM', ARGV[4] .. q .. ':dead', id)
  redis.call('ZADD', ARGV[4] .. q .. ':waiting', ARGV[1], id)
end
redis.call('HSET', KEYS[1], 'state', 'waiting', 'ready_at_ms', ARGV[1], 'tries', '0',
  'finished_at_ms', '', 'next_try_at_ms', '', 'progress', '0', 'progress_message', '')
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PERSIST', KEYS[1])
redis.call('PUBLISH', ARGV[6], id)
redis.call('PUBLISH', ARGV[5], cjson.encode({id = id, version = version}))
return {'requeued', redis.call('HGETALL', KEYS[1])}
