-- Record a running job's progress and announce it.
-- KEYS: 1 job hash.  ARGV: 1 percent, 2 message, 3 events channel
if redis.call('HGET', KEYS[1], 'state') ~= 'in_progress' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_message', ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('PUBLISH', ARGV[3], cjson.encode({id = id, version = version}))
return 1
