--- @include "lib/keys"
--- @include "lib/scores"
--- @include "lib/fairness"

-- Debounce (debounce.py), for submit.lua: a debounce key names the
-- job its window keeps, and expires with the window. Within it, a submit in
-- mode 'keep-first' answers with that job; in mode 'replace' (or
-- 'replace-delay') it gives that job, while it has not started, the new
-- arq job data (payload and meta) and, for 'replace-delay', a start pushed back
-- to a window from now, and the window starts again. A job that started (it
-- has a record) or is gone is not replaced: the submit creates a new one.

-- The job the window keeps, as submit.lua answers it ({'debounced', id,
-- replaced '1' or '0'}), or nil when the submit is to create a job.
local function debounce(dkey, mode, window_ms, now, queue, flow_hash, job, flow)
  local kept = redis.call('GET', dkey)
  if not kept then return nil end
  if mode == 'keep-first' then
    -- Its data or its record, whatever its state; a job deleted meanwhile is
    -- not kept (the submit creates one, which the window then keeps).
    if redis.call('EXISTS', K.arq_job .. kept, K.job .. kept) == 0 then return nil end
    return {'debounced', kept, '0'}
  end
  if redis.call('EXISTS', K.job .. kept) == 1 then return nil end -- started, or finished
  local score = redis.call('ZSCORE', queue, kept)
  if not score or redis.call('EXISTS', K.arq_job .. kept) == 0 then return nil end
  local base = band_base(priority_of(score))
  local due = tonumber(score) - base
  if mode == 'replace-delay' then due = math.max(due, now + window_ms) end
  local queued = fmt(base + due)
  redis.call('SET', K.arq_job .. kept, job, 'PX', math.max(due - now, 0) + K.arq_expiry_extra_ms)
  redis.call('ZADD', queue, 'XX', queued, kept)
  local old = redis.call('HGET', flow_hash, kept)
  if old and old ~= flow then fair_leave(queue, old, kept) end
  if flow ~= '' then
    redis.call('HSET', flow_hash, kept, flow)
    fair_enter(queue, flow, queued, kept)
  elseif old then
    redis.call('HDEL', flow_hash, kept)
  end
  redis.call('PEXPIRE', dkey, window_ms)
  redis.call('SPUBLISH', K.events .. kept, 1)
  return {'debounced', kept, '1'}
end
