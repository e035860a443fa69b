#!lua flags=allow-oom
--- @include "lib/keys"
--- @include "lib/record"
--- @include "lib/fairness"
--- @include "lib/cancel"
--- @include "lib/requeue"
--- @include "lib/group"
-- One batch of a bulk action (cancel, requeue or delete) over at most a few
-- hundred jobs of one queue, with the semantics of the single-job scripts:
-- cancel as cancel.lua (a running job is asked to stop), requeue as
-- requeue.lua (only a dead job, under the same id, keeping its payload and
-- trace context), delete removes the record, arq's keys, the index entries
-- and the flow entries (never a running job's). A job not in a state the
-- action applies to is skipped, so a batch run twice does nothing the second
-- time. The caller bounds the batch: one call never walks an index.
--
-- KEYS: 1 queue; then, declared (named here too, see store/declared.py): the
--       queue's flow and waiting hashes, every index, its limited types'
--       running counts, holds and rings and the marks' flag, and per job its
--       record, arq job key, lock and result key and its group's keys
-- ARGV: 1 'cancel', 'requeue' or 'delete', 2 now ms, 3 cancelled retention ms,
--       4.. job ids; for 'requeue' each id is followed by its job data, or ''
--       (a finished job's payload is in arq's result key, lib/arq_result.lua:
--       the caller rebuilds its job key from it; '': the job key is kept)
-- Returns {done, skipped}.
local action, queue, now, ttl = ARGV[1], KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local done, skipped, wake, abort = 0, 0, false, false

local function delete(rec)
  local id = rec.id
  if INDEXED[rec.state] then redis.call('ZREM', index(queue, rec.state), id) end
  redis.call('ZREM', queue, id)
  local flow = rec.flow or redis.call('HGET', qkey(queue, 'flow'), id)
  if flow then
    fair_leave(queue, flow, id)
    redis.call('HDEL', qkey(queue, 'flow'), id)
  end
  redis.call('DEL', K.job .. id, K.arq_job .. id, K.arq_result .. id, K.arq_lock .. id)
  -- A group member that never ended counts as cancelled: its group still finishes.
  if not TERMINAL[rec.state] then group_end(rec, 'cancelled', now, {}) end
  redis.call('SPUBLISH', K.events .. id, rec.version + 1)
end

for i = 4, #ARGV, action == 'requeue' and 2 or 1 do
  local id = ARGV[i]
  local rec = load(id, queue, false)
  local exists = not rec.new or redis.call('ZSCORE', queue, id)
  local applied = false
  if not exists then
    applied = false
  elseif action == 'requeue' then
    local job = ARGV[i + 1]
    if rec.state == 'dead' and (job ~= '' or redis.call('EXISTS', K.arq_job .. id) == 1) then
      -- A dead job's data is in arq's result key: the caller rebuilt its job key.
      if job ~= '' then redis.call('SET', K.arq_job .. id, job) end
      requeue_dead(rec, now)
      wake, applied = true, true
    end
  elseif action == 'cancel' then
    local outcome
    outcome, applied = cancel_job(rec, now, ttl)
    if applied and outcome == 'cancelling' then abort = true end
  elseif action == 'delete' then
    if rec.state ~= 'in_progress' then
      delete(rec)
      applied = true
    end
  end
  if applied then done = done + 1 else skipped = skipped + 1 end
end
if wake then redis.call('SPUBLISH', wake_channel(queue), 'requeued') end
if abort then redis.call('SPUBLISH', wake_channel(queue), 'abort') end
return {done, skipped}
