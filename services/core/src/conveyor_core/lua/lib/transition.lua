--- @include "lib/keys"
--- @include "lib/scores"
--- @include "lib/record"
--- @include "lib/fairness"
--- @include "lib/flow"
--- @include "lib/arq_result"
--- @include "lib/group"

-- The one transition every lifecycle script is built on: `transition` moves
-- a job to a new state: its index entries, its hash, the arq keys the new
-- state implies, its expiry and its change notice, all in one place.
--
-- A job that waits for its first try is only arq's: its job key and its entry
-- in the queue. From its first claim on, Conveyor's hash records its life
-- (lib/record.lua reads it).

-- Move `rec` to state `to`. `score` is the job's score in its new place: the
-- start time (in_progress), the due time (queued, retrying: arq's queue
-- score is that in the record's priority band) or, for a final state, when the record expires (now + ttl_ms).
-- `fields` are more hash fields as a flat list. Returns the new version.
local function transition(rec, to, now, score, fields, ttl_ms)
  local id, queue, hash = rec.id, rec.queue, K.job .. rec.id
  if INDEXED[rec.state] then redis.call('ZREM', index(queue, rec.state), id) end
  if INDEXED[to] then redis.call('ZADD', index(queue, to), fmt(score), id) end
  if rec.state == 'in_progress' and to ~= 'in_progress' and rec.flow then release(rec) end
  if to == 'in_progress' and rec.flow then fair_leave(queue, rec.flow, id) end
  local version = rec.version + 1
  local version_s = fmt(version)
  -- A final state ends arq's keys: the job key becomes arq's result key, which
  -- holds the result or error (lib/arq_result.lua), so the hash does not.
  if TERMINAL[to] then fields = arq_finish(rec, to, now, ttl_ms, fields) end
  redis.call('HSET', hash, 'state', to, 'version', version_s, 'queue', queue, unpack(fields))
  -- arq's keys, as arq's own start and finish would leave them (the claim
  -- sets the lock; a try's count lives in the record, not in arq's retry key).
  if TERMINAL[to] then
    redis.call('ZREM', queue, id)
    -- Only a keyed job has a flow entry (a claimed one's record says; one never
    -- claimed may have one).
    if rec.new or (rec.flow and flow_keyed(rec.flow)) then
      local flow = rec.flow or redis.call('HGET', qkey(queue, 'flow'), id)
      if flow then fair_leave(queue, flow, id) end
      redis.call('HDEL', qkey(queue, 'flow'), id)
    end
    -- arq's result key (see arq_finish) lives as long as the record: it also
    -- keeps arq (and submit) from taking the same id again.
    redis.call('PEXPIRE', hash, fmt(ttl_ms))
    -- A member of a group is counted in it (lib/group.lua).
    group_end(rec, to, now, fields)
  elseif to ~= 'in_progress' then
    -- queued or retrying: back in arq's queue, due at `score`, in its band
    local queued = fmt(band_base(rec.priority) + score)
    redis.call('ZADD', queue, queued, id)
    if rec.flow then fair_enter(queue, rec.flow, queued, id) end
    redis.call('DEL', K.arq_lock .. id)
    redis.call('PEXPIRE', K.arq_job .. id, fmt(math.max(score - now, 0) + K.arq_expiry_extra_ms))
  end
  redis.call('SPUBLISH', K.events .. id, version_s)
  return version
end
