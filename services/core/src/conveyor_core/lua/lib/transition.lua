-- The one transition every lifecycle script is built on; lua_script() puts it
-- (after K, the key names of keys.py, and lib/keys.lua) in front of each
-- script that uses it.
--
-- A job that waits for its first try is only arq's: its job key and its entry
-- in the queue. From its first claim on, Conveyor's hash records its life.
-- `load` reads that record; `transition` moves the job to a new state: its
-- index entries, its hash, the arq keys the new state implies, its expiry
-- and its change notice, all in one place.

local INDEXED = {in_progress = true, retrying = true, complete = true, dead = true,
  cancelled = true}
local TERMINAL = {complete = true, dead = true, cancelled = true}

local function fair_enter(queue, flow, score, id)
  local t, key = flow_parts(flow)
  if not t or key == '' then return end
  local keyq = keyq_key(queue, t, key)
  if redis.call('ZADD', keyq, score, id) == 1 and redis.call('ZCARD', keyq) == 1 then
    redis.call('RPUSH', ring_key(queue, t), key)
  end
end

local function fair_leave(queue, flow, id)
  local t, key = flow_parts(flow)
  if not t or key == '' then return end
  local keyq = keyq_key(queue, t, key)
  if redis.call('ZREM', keyq, id) == 1 and redis.call('EXISTS', keyq) == 0 then
    redis.call('LREM', ring_key(queue, t), 0, key)
  end
end

-- A score as Redis should read it: an integer, never in exponent notation.
local function fmt(n) return string.format('%.0f', n) end

-- Priorities are bands of scores in arq's queue (see store.py, queue_score):
-- the lowest score of a priority's band, and the priority of a score.
local function band_base(priority) return (priority - K.default_priority) * K.band_ms end
local function priority_of(score)
  local p = math.floor(tonumber(score) / K.band_ms) + K.default_priority
  return math.min(math.max(p, K.highest_priority), K.lowest_priority)
end

-- The job's record: {id, queue, state, version, tries, cancel_requested,
-- priority, flow, started and ready (ms)}, with state 'queued' and version 1 (the job as submitted) for a
-- job that has no hash yet, or nil when the job has no hash and `must_exist`
-- is set. A job's first claim writes its priority into the record (from its
-- score), so a retry or a put-back returns to the same band.
local function load(id, queue, must_exist)
  local r = redis.call('HMGET', K.job .. id, 'state', 'version', 'tries', 'cancel_requested',
    'queue', 'priority', 'flow', 'started_at_ms', 'ready_at_ms')
  if not r[1] then
    if must_exist then return nil end
    return {id = id, queue = queue, state = 'queued', version = 1, tries = 0, cancel = false,
      priority = K.default_priority, new = true}
  end
  return {id = id, queue = queue or r[5], state = r[1], version = tonumber(r[2]) or 0,
    tries = tonumber(r[3]) or 0, cancel = r[4] == '1',
    priority = tonumber(r[6]) or K.default_priority, flow = r[7] or nil, started = r[8],
    ready = r[9]}
end

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
    redis.call('PUBLISH', K.wake .. rec.queue, 'freed')
  end
end

-- Move `rec` to state `to`. `score` is the job's score in its new place: the
-- start time (in_progress), the due time (queued, retrying: arq's queue
-- score is that in the record's priority band) or, for a final state, when the record expires (now + ttl_ms).
-- `fields` are more hash fields as a flat list. Returns the new version.
local function transition(rec, to, now, score, fields, ttl_ms)
  local id, queue, hash = rec.id, rec.queue, K.job .. rec.id
  if INDEXED[rec.state] then redis.call('ZREM', index(queue, rec.state), id) end
  if INDEXED[to] then redis.call('ZADD', index(queue, to), score, id) end
  if rec.state == 'in_progress' and to ~= 'in_progress' and rec.flow then release(rec) end
  if to == 'in_progress' and rec.flow then fair_leave(queue, rec.flow, id) end
  local version = rec.version + 1
  -- A final state ends arq's keys: the job key becomes arq's result key, which
  -- holds the result or error (lib/arq_result.lua), so the hash does not.
  if TERMINAL[to] then fields = arq_finish(rec, to, now, ttl_ms, fields) end
  redis.call('HSET', hash, 'state', to, 'version', version, 'queue', queue, unpack(fields))
  -- arq's keys, as arq's own start and finish would leave them.
  if to == 'in_progress' then
    -- rec.tries counts this try already. arq's run_job counts it by INCR of its
    -- retry key: set that one lower, so arq's count is ours (a shutdown that
    -- put the job back did not use a try up). A job's first claim (it has no
    -- record yet) needs no SET: it has no retry key (every end of a job deletes
    -- it with the record's expiry), and arq's INCR of none makes try 1.
    if not rec.new then redis.call('SET', K.arq_retry .. id, rec.tries - 1, 'EX', K.arq_retry_ttl_s) end
  elseif TERMINAL[to] then
    redis.call('ZREM', queue, id)
    if rec.flow or rec.new then
      local flow = rec.flow or redis.call('HGET', qkey(queue, 'flow'), id)
      if flow then fair_leave(queue, flow, id) end
      redis.call('HDEL', qkey(queue, 'flow'), id)
    end
    -- arq's result key (see arq_finish) lives as long as the record: it also
    -- keeps arq (and submit) from taking the same id again.
    redis.call('PEXPIRE', hash, ttl_ms)
  else -- queued or retrying: back in arq's queue, due at `score`, in its band
    local queued = fmt(band_base(rec.priority) + score)
    redis.call('ZADD', queue, queued, id)
    if rec.flow then fair_enter(queue, rec.flow, queued, id) end
    redis.call('DEL', K.arq_lock .. id)
    redis.call('PEXPIRE', K.arq_job .. id, math.max(score - now, 0) + K.arq_expiry_extra_ms)
  end
  redis.call('PUBLISH', K.events .. id, version)
  return version
end

-- History (history.py): per queue and minute, a hash of counts by
-- `{job type}:{event}`, expiring K.history_ttl_s after its minute. A key's
-- expiry is set when one of its fields is new (HINCRBY answers 1), so it
-- costs one command per event, and rarely a second.
local function history(queue, at_ms, field, by)
  local key = qkey(queue, 'history:' .. math.floor(at_ms / 60000))
  if redis.call('HINCRBY', key, field, by) == by then
    redis.call('EXPIRE', key, K.history_ttl_s)
  end
end
