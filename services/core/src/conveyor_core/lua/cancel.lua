#!lua flags=allow-oom
-- Cancel a job. A waiting or retrying job is cancelled at once (it leaves
-- arq's queue); a running one is asked to stop: its worker hears 'abort' on
-- the queue's wake channel, cancels the job's task and records `cancelled`.
--
-- KEYS: 1 queue
-- ARGV: 1 job id, 2 now ms, 3 cancelled retention ms
-- Returns {outcome, the record as left, as field, value, ...}: outcome is
-- 'missing', the final state it was already in, 'cancelling', 'cancel_requested'
-- (a running job asked to stop before: asked again, nothing else changes) or
-- 'cancelled_now'.
local id, queue, now = ARGV[1], KEYS[1], tonumber(ARGV[2])
local rec = load(id, queue, false)
if rec.new and not redis.call('ZSCORE', queue, id) then return {'missing', {}} end
if TERMINAL[rec.state] then return {rec.state, redis.call('HGETALL', K.job .. id)} end
local outcome = 'cancelled_now'
if rec.state == 'in_progress' then
  local version = rec.version + 1
  redis.call('HSET', K.job .. id, 'cancel_requested', '1', 'version', version)
  redis.call('PUBLISH', K.wake .. queue, 'abort')
  redis.call('PUBLISH', K.events .. id, version)
  outcome = 'cancelling'
  if rec.cancel then outcome = 'cancel_requested' end
else
  local ttl = tonumber(ARGV[3])
  transition(rec, 'cancelled', now, now + ttl, {'finished_at_ms', now, 'next_try_at_ms', ''}, ttl)
end
return {outcome, redis.call('HGETALL', K.job .. id)}
