--- @include "lib/keys"

-- Keys take turns (flow.py): a keyed job waits in its key's queue too, and a
-- key with waiting jobs is in its type's ring.

local function fair_enter(queue, flow, score, id)
  if not flow_keyed(flow) then return end
  local t, key = flow_parts(flow)
  if not t or key == '' then return end
  local keyq = keyq_key(queue, t, key)
  if redis.call('ZADD', keyq, score, id) == 1 and redis.call('ZCARD', keyq) == 1 then
    redis.call('RPUSH', ring_key(queue, t), key)
  end
end

local function fair_leave(queue, flow, id)
  if not flow_keyed(flow) then return end
  local t, key = flow_parts(flow)
  if not t or key == '' then return end
  local keyq = keyq_key(queue, t, key)
  if redis.call('ZREM', keyq, id) == 1 and redis.call('EXISTS', keyq) == 0 then
    redis.call('LREM', ring_key(queue, t), 0, key)
  end
end
