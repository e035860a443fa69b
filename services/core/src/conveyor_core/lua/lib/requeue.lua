--- @include "lib/keys"
--- @include "lib/transition"
--- @include "lib/group"

-- Put a dead job back on its queue under the same id, for requeue.lua and
-- bulk.lua alike: a new first try (tries, snoozes, progress, times and a
-- pending cancel reset, `requeues` counted), a keyed job's flow entry back. Its arq job key
-- must exist; the caller may rewrite it first (a new trace context). A
-- member of a group counts in it again (lib/group.lua).
local function requeue_dead(rec, now)
  local id = rec.id
  redis.call('DEL', K.arq_result .. id)
  redis.call('PERSIST', K.job .. id)
  redis.call('HINCRBY', K.job .. id, 'requeues', 1)
  transition(rec, 'queued', now, now, {'ready_at_ms', now, 'tries', 0, 'finished_at_ms', '',
    'next_try_at_ms', '', 'progress', 0, 'progress_message', '', 'cancel_requested', '', 'snoozes', 0}, 0)
  if rec.flow and flow_keyed(rec.flow) then redis.call('HSET', qkey(rec.queue, 'flow'), id, rec.flow) end
  group_requeue(rec)
end
