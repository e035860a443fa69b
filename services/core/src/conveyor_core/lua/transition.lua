-- Move a job to a new state: hash fields, index entries, expiry, change event.
--
-- KEYS: 1 job hash, 2 counts since the last digest (bumped for complete, failed, dead)
-- ARGV: 1 new state, 2 index score, 3 ttl s (0 keeps the hash forever),
--       4 allowed current states as ',a,b,' ('' allows any), 5 index prefix,
--       6 events channel, 7.. hash field/value pairs
-- Returns {1, old state} when moved, {0, current state or ''} when not.
local old = redis.call('HGET', KEYS[1], 'state')
if not old then return {0, ''} end
if ARGV[4] ~= '' and not string.find(ARGV[4], ',' .. old .. ',', 1, true) then
  return {0, old}
end
local id = redis.call('HGET', KEYS[1], 'id')
local queue = redis.call('HGET', KEYS[1], 'queue')
for _, q in ipairs({queue, 'all'}) do
  redis.call('ZREM', ARGV[5] .. q .. ':' .. old, id)
  redis.call('ZADD', ARGV[5] .. q .. ':' .. ARGV[1], ARGV[2], id)
end
local fields = {'state', ARGV[1]}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
if ARGV[1] == 'complete' or ARGV[1] == 'failed' or ARGV[1] == 'dead' then
  redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'job_type') .. ':' .. ARGV[1], 1)
end
redis.call('PUBLISH', ARGV[6], cjson.encode({id = id, version = version}))
return {1, old}
