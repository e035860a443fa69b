--- @include "lib/keys"

-- History (history.py): per queue and minute, a hash of counts by
-- `{job type}:{event}`, expiring K.history_ttl_s after its minute. A key's
-- expiry is set when one of its fields is new (HINCRBY answers 1), so it
-- costs one command per event, and rarely a second.
local function history(queue, at_ms, field, by)
  local key = qkey(queue, 'history:' .. string.format('%d', math.floor(at_ms / 60000)))
  if redis.call('HINCRBY', key, field, string.format('%d', by)) == by then
    redis.call('EXPIRE', key, K.history_ttl_s)
  end
end
