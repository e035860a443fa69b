--- @include "lib/keys"

-- Flow control's side of a job leaving in_progress (flow.py, lib/claim.lua).

-- A limited job leaves in_progress: it no longer counts as running; when
-- the claim found its type or key blocked, the queue's workers are woken.
-- (Its starts stay in the rate windows: a rate counts starts.)
local function release(rec)
  local t, key = flow_parts(rec.flow)
  if not t then return end
  redis.call('ZREM', running_key(rec.queue, t), rec.id)
  if key ~= '' then redis.call('ZREM', running_key_of(rec.queue, t, key), rec.id) end
  -- The claim marks what it found blocked; a mark goes when one of its jobs
  -- ends (a later claim marks it again if it is still blocked), so marks of
  -- keys that come and go do not pile up.
  if redis.call('HDEL', qkey(rec.queue, 'waiting'), t, t .. '\n' .. key) > 0 then
    redis.call('SPUBLISH', wake_channel(rec.queue), 'freed')
  end
end
