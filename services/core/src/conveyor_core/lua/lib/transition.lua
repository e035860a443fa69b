-- Shared by every script that moves a job between states; lua_script()
-- prepends it. Moves the job in `job_key` to `state` if its current state is
-- in `allowed` (',a,b,'; '' allows any): index entries, hash fields, expiry
-- (ttl_s 0 keeps the hash forever) and a change event.
-- Returns {1, old state} when moved, {0, current state or ''} when not.
local function transition(job_key, state, score, ttl_s, allowed, index_prefix, channel, fields)
  local old = redis.call('HGET', job_key, 'state')
  if not old then return {0, ''} end
  if allowed ~= '' and not string.find(allowed, ',' .. old .. ',', 1, true) then
    return {0, old}
  end
  local id = redis.call('HGET', job_key, 'id')
  local queue = redis.call('HGET', job_key, 'queue')
  for _, q in ipairs({queue, 'all'}) do
    redis.call('ZREM', index_prefix .. q .. ':' .. old, id)
    redis.call('ZADD', index_prefix .. q .. ':' .. state, score, id)
  end
  redis.call('HSET', job_key, 'state', state, unpack(fields))
  local version = redis.call('HINCRBY', job_key, 'version', 1)
  if ttl_s > 0 then
    redis.call('EXPIRE', job_key, ttl_s)
  else
    redis.call('PERSIST', job_key)
  end
  redis.call('PUBLISH', channel, cjson.encode({id = id, version = version}))
  return {1, old}
end
