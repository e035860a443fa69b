-- A job's record: the hash Conveyor keeps from a job's first claim on, and
-- the states that have an index of their own.

local INDEXED = {in_progress = true, retrying = true, complete = true, dead = true,
  cancelled = true}
local TERMINAL = {complete = true, dead = true, cancelled = true}

-- The job's record: {id, queue, state, version, tries, cancel_requested,
-- priority, flow, started and ready (ms), token (its try's, see lib/claim.lua),
-- counted (the running counts its try holds, see lib/flow.lua)}, with state
-- 'queued' and version 1 (the job as submitted) for a
-- job that has no hash yet, or nil when the job has no hash and `must_exist`
-- is set. A job's first claim writes its priority into the record (from its
-- score), so a retry or a put-back returns to the same band.
local function load(id, queue, must_exist)
  local r = redis.call('HMGET', K.job .. id, 'state', 'version', 'tries', 'cancel_requested',
    'queue', 'priority', 'flow', 'started_at_ms', 'ready_at_ms', 'token', 'counted')
  if not r[1] then
    if must_exist then return nil end
    return {id = id, queue = queue, state = 'queued', version = 1, tries = 0, cancel = false,
      priority = K.default_priority, new = true}
  end
  return {id = id, queue = queue or r[5], state = r[1], version = tonumber(r[2]) or 0,
    tries = tonumber(r[3]) or 0, cancel = r[4] == '1',
    priority = tonumber(r[6]) or K.default_priority, flow = r[7] or nil, started = r[8],
    ready = r[9], token = r[10] or '', counted = r[11] ~= '' and r[11] or nil}
end
