#!lua flags=allow-oom
--- @include "lib/record"
--- @include "lib/cancel"
-- Cancel a job. A waiting or retrying job is cancelled at once (it leaves
-- arq's queue); a running one is asked to stop: its worker hears 'abort' on
-- the queue's wake channel, cancels the job's task and records `cancelled`.
--
-- KEYS: 1 queue; then, declared (named here too, see store/declared.py): the
--       job's record, arq job key, lock and result key, its group's keys, the
--       queue's flow and waiting hashes, every index, a limited type's running
--       count, hold and ring and the marks' flag
-- ARGV: 1 job id, 2 now ms, 3 cancelled retention ms
-- Returns {outcome, the record as left, as field, value, ...}: outcome is
-- 'missing', the final state it was already in, 'cancelling', 'cancel_requested'
-- (a running job asked to stop before: asked again, nothing else changes) or
-- 'cancelled_now'.
local id, queue, now = ARGV[1], KEYS[1], tonumber(ARGV[2])
local rec = load(id, queue, false)
if rec.new and not redis.call('ZSCORE', queue, id) then return {'missing', {}} end
local outcome, changed = cancel_job(rec, now, tonumber(ARGV[3]))
-- Asked again, the worker is told again: it may have missed the first word;
-- the outcome says the job had been asked already (nothing changed).
if outcome == 'cancelling' then
  redis.call('SPUBLISH', wake_channel(queue), 'abort')
  if not changed then outcome = 'cancel_requested' end
end
return {outcome, redis.call('HGETALL', K.job .. id)}
