-- Create a job: arq's job key and queue entry (unless adopting a job that arq
-- already holds), Conveyor's hash and indexes, the idempotency key, and the
-- wake-up and change events. Atomic, so a failure leaves nothing behind.
--
-- KEYS: 1 arq job key, 2 arq result key, 3 queue, 4 job hash, 5 idempotency key or ''
-- ARGV: 1 job id, 2 arq job bytes or '' (adopt), 3 ready-at ms, 4 arq expiry ms,
--       5 idempotency value, 6 idempotency ttl s, 7 index prefix, 8 queue name,
--       9 now ms, 10 events channel, 11 wake channel, 12.. hash field/value pairs
local id = ARGV[1]
if KEYS[5] ~= '' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {'exists', existing} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'duplicate', ''} end
if ARGV[2] ~= '' then
  if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return {'duplicate', ''} end
  redis.call('PSETEX', KEYS[1], ARGV[4], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[3], id)
end
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[4], unpack(fields))
local state = redis.call('HGET', KEYS[4], 'state')
for _, q in ipairs({ARGV[8], 'all'}) do
  redis.call('ZADD', ARGV[7] .. q .. ':all', ARGV[9], id)
  redis.call('ZADD', ARGV[7] .. q .. ':' .. state, ARGV[3], id)
end
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[6]) end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[11], id) end
redis.call('PUBLISH', ARGV[10], cjson.encode({id = id, version = 1}))
return {'created', ''}
