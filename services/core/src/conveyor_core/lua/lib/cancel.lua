--- @include "lib/record"
--- @include "lib/transition"

-- Cancel one job, for cancel.lua and bulk.lua alike. A waiting or retrying
-- job is cancelled at once (it leaves arq's queue); a running one is asked to
-- stop: its record is flagged, and the caller announces 'abort' on the
-- queue's wake channel (once per call), so its worker cancels the task and
-- records `cancelled`.
-- Returns the outcome ('cancelling', 'cancelled_now', or the final state the
-- job was already in) and whether anything changed.
local function cancel_job(rec, now, ttl)
  if TERMINAL[rec.state] then return rec.state, false end
  if rec.state == 'in_progress' then
    if rec.cancel then return 'cancelling', false end
    local version = rec.version + 1
    redis.call('HSET', K.job .. rec.id, 'cancel_requested', '1', 'version', version)
    redis.call('SPUBLISH', K.events .. rec.id, version)
    return 'cancelling', true
  end
  transition(rec, 'cancelled', now, now + ttl, {'finished_at_ms', now, 'next_try_at_ms', ''}, ttl)
  return 'cancelled_now', true
end
