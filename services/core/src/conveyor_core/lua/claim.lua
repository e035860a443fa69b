#!lua
-- One poll of a worker, in one round trip: claim up to ARGV[3] due jobs, start
-- each one's record, and say when the next deferred job falls due.
--
-- A job is claimable when it is due and not locked, the check arq's
-- start_jobs makes per job in a WATCH/MULTI transaction; the lock is arq's own
-- in-progress key. arq keeps running jobs in the queue until they finish, so
-- the scan skips locked ones, reading at most ARGV[4] entries. A job whose
-- worker died while a cancel was pending is cancelled here, not started.
-- A paused queue (its flag is read once per call) starts nothing, and the
-- next due time is left out: its workers sleep until resume wakes them.
--
-- Priorities are bands of scores (see store.py, queue_score): the scan reads
-- the due part of each band in turn, highest priority first, and jumps over
-- empty bands (a lookup of the next entry), so a queue of one priority costs
-- what it did before bands: a few O(log n) reads besides the jobs it claims.
--
-- Limits (flow.py): with ARGV[6] (the queue's limited types), each candidate's
-- flow entry says its type and key; a job over a running limit or a rate is
-- passed over (it stays queued, takes no slot, uses no try), the first time
-- per type or key and call recorded in the waiting hash (why it waits), and
-- a rate's earliest next start becomes a due time for the worker's sleep.
-- Running sets heal themselves: at the limit, an id whose lock lapsed (a
-- dead worker's) is dropped, each id checked at most once per lock ttl. Without ARGV[6] none of
-- this runs: unlimited queues cost what they did.
--
-- KEYS: 1 queue, 2 the queue's paused flag, 3 its flow hash, 4 its waiting hash
-- ARGV: 1 now ms, 2 lock ttl ms, 3 how many to claim, 4 scan limit,
--       5 cancelled retention ms, 6 limits JSON or ''
-- Returns {{id, due ms, try, ...}, next due ms or '', paused-at ms or '',
--   {passed over for a limit, passed over for a rate}}.
local queue, now, lock_ms = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local paused_at = redis.call('GET', KEYS[2])
if paused_at then return {{}, '', paused_at, {0, 0}} end
local wanted, scan_limit, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), 50
local limits = ARGV[6] ~= '' and cjson.decode(ARGV[6]) or nil
local claimed, count_, scanned = {}, 0, 0
local next_due = nil
local held = {limit = 0, rate = 0}

local function sooner(due) if not next_due or due < next_due then next_due = due end end

-- Per call: what each running set and start window holds, read once.
local running, windows, marked = {}, {}, {}

local function running_count(key, max)
  local n = running[key]
  if n then return n end
  n = redis.call('ZCARD', key)
  if n >= max then
    -- At the limit: ids that ran longer than a lock ttl since last checked are
    -- dropped if their lock lapsed (a dead worker's), else checked a ttl later.
    local old = redis.call('ZRANGEBYSCORE', key, '-inf', now - tonumber(lock_ms))
    for _, id in ipairs(old) do
      if redis.call('EXISTS', K.arq_lock .. id) == 0 then
        redis.call('ZREM', key, id)
        n = n - 1
      else
        redis.call('ZADD', key, 'XX', now, id)
      end
    end
  end
  running[key] = n
  return n
end

local function window(key, rate)
  local w = windows[key]
  if w then return w end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - rate[2])
  w = {n = redis.call('ZCARD', key), max = rate[1], per = rate[2]}
  windows[key] = w
  return w
end

local function mark(subject, reason)
  held[reason] = held[reason] + 1
  if not marked[subject] then
    marked[subject] = true
    redis.call('HSET', KEYS[4], subject, reason)
  end
end

-- The checks a job of a limited type must pass: nil when it may start now,
-- else the reason; `starts` collects what to count if it does start.
local function gate(flow)
  local t, key = flow_parts(flow)
  local l = t and limits[t]
  if not l then return nil, nil end
  local checks = {}
  if l.n then checks[#checks + 1] = {'n', running_key(queue, t), l.n, t} end
  if l.r then checks[#checks + 1] = {'r', starts_key(queue, t), l.r, t} end
  if key ~= '' then
    local subject = t .. '\n' .. key
    if l.kn then checks[#checks + 1] = {'n', running_key_of(queue, t, key), l.kn, subject} end
    if l.kr then checks[#checks + 1] = {'r', starts_key_of(queue, t, key), l.kr, subject} end
  end
  for _, c in ipairs(checks) do
    if c[1] == 'n' then
      if running_count(c[2], c[3]) >= c[3] then mark(c[4], 'limit') return 'limit', nil end
    else
      local w = window(c[2], c[3])
      if w.n >= w.max then
        -- The earliest start the window allows: when its (n - max + 1)th oldest leaves.
        local oldest = redis.call('ZRANGE', c[2], w.n - w.max, w.n - w.max, 'WITHSCORES')
        if oldest[2] then sooner(tonumber(oldest[2]) + w.per) end
        mark(c[4], 'rate')
        return 'rate', nil
      end
    end
  end
  return nil, checks
end

-- A limited job starts: it runs and its start counts in the windows (each
-- window's expiry is renewed once per call, at the end). A mark of its type or
-- key stays until one of its jobs ends (see release in transition.lua).
local function count_start(id, tries, checks)
  for _, c in ipairs(checks) do
    if c[1] == 'n' then
      redis.call('ZADD', c[2], now, id)
      running[c[2]] = running[c[2]] + 1
    else
      redis.call('ZADD', c[2], now, id .. ':' .. tries)
      windows[c[2]].n = windows[c[2]].n + 1
      windows[c[2]].started = true
    end
  end
end

-- Keys take turns: a slot that falls to a keyed job goes to the next key of
-- its type's ring that has a job due in this band and may start now (at most
-- 10 keys are tried). Returns that job's id, score, flow entry and checks, or
-- nil when no key may start one.
local function take_turn(t, base)
  local ring = ring_key(queue, t)
  for _ = 1, math.min(redis.call('LLEN', ring), 10) do
    local key = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    if not key then return nil end
    local row = redis.call('ZRANGEBYSCORE', keyq_key(queue, t, key), fmt(base), fmt(base + now),
      'WITHSCORES', 'LIMIT', 0, 1)
    if row[1] and redis.call('EXISTS', K.arq_lock .. row[1]) == 0 then
      local flow = t .. '\n' .. key
      local held_for, checks = gate(flow)
      if not held_for then return row[1], row[2], flow, checks end
      if marked[t] then return nil end -- the whole type is held: no key may start
    end
  end
  return nil
end

-- Types (and bands) whose turn found no key that may start a job, in this call.
local no_turn = {}

-- Start one job: lock it, count it against its limits, start its record.
local function start(id, score, base, flow, checks)
  local rec = load(id, queue, false)
  if rec.state == 'in_progress' and rec.cancel then
    local ttl = tonumber(ARGV[5])
    transition(rec, 'cancelled', now, now + ttl, {'finished_at_ms', now}, ttl)
    return
  elseif TERMINAL[rec.state] then
    redis.call('ZREM', queue, id) -- finished, yet back in the queue: a bare arq enqueue
    return
  end
  local due = fmt(tonumber(score) - base)
  redis.call('PSETEX', K.arq_lock .. id, lock_ms, '1')
  rec.tries = rec.tries + 1
  local fields = {'tries', rec.tries, 'started_at_ms', now, 'ready_at_ms', due,
    'next_try_at_ms', '', 'priority', priority_of(score)}
  if flow then
    if checks then count_start(id, rec.tries, checks) end
    rec.flow = flow
    fields[#fields + 1] = 'flow'
    fields[#fields + 1] = flow
  end
  transition(rec, 'in_progress', now, now, fields)
  count_ = count_ + 1
  for _, v in ipairs({id, due, rec.tries}) do claimed[#claimed + 1] = v end
end

-- Claim from the due rows of one band; true when the band has more rows to read.
local function claim_rows(rows, base)
  for i = 1, #rows, 2 do
    if count_ >= wanted then return false end
    scanned = scanned + 1
    local id, score = rows[i], rows[i + 1]
    if redis.call('EXISTS', K.arq_lock .. id) == 0 then
      local flow = limits and redis.call('HGET', KEYS[3], id) or nil
      local t, key = nil, ''
      if flow then t, key = flow_parts(flow) end
      local keyed = t and key ~= '' and limits[t]
      if keyed and not no_turn[t .. base] and redis.call('ZSCORE', keyq_key(queue, t, key), id) then
        local turn_id, turn_score, turn_flow, checks = take_turn(t, base)
        if turn_id then start(turn_id, turn_score, base, turn_flow, checks)
        else no_turn[t .. base] = true end -- no key may start one: not asked again
        if turn_id ~= id and count_ < wanted then
          -- This job waits for its key's turn (if its key is held, that says why);
          -- with no turn taken at all (its key not among the keys tried), it starts
          -- itself when it may, so no keyed job can wait for ever.
          local held_for, own_checks = gate(flow)
          if not turn_id and not held_for then start(id, score, base, flow, own_checks) end
        end
      else
        local held_for, checks = nil, nil
        if flow then held_for, checks = gate(flow) end
        if not held_for then start(id, score, base, flow, checks) end
      end
    end
  end
  return #rows == 2 * batch
end

local first = redis.call('ZRANGEBYSCORE', queue, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local band = first[2] and priority_of(first[2]) or nil
while band and count_ < wanted and scanned < scan_limit do
  local base = band_base(band)
  local offset = 0
  while count_ < wanted and scanned < scan_limit do
    local rows = redis.call('ZRANGEBYSCORE', queue, fmt(base), fmt(base + now), 'WITHSCORES',
      'LIMIT', offset, batch)
    if not claim_rows(rows, base) then break end
    offset = offset + batch
  end
  if count_ >= wanted then break end -- no slot left: no next due time needed
  -- What follows the due part: this band's next deferred job, or the next band.
  local after = redis.call('ZRANGEBYSCORE', queue, '(' .. fmt(base + now), '+inf', 'WITHSCORES',
    'LIMIT', 0, 1)
  if after[2] and priority_of(after[2]) == band then
    sooner(tonumber(after[2]) - base)
    if band == K.lowest_priority then break end
    after = redis.call('ZRANGEBYSCORE', queue, fmt(band_base(band + 1)), '+inf', 'WITHSCORES',
      'LIMIT', 0, 1)
  end
  band = after[2] and priority_of(after[2]) or nil
end
for key, w in pairs(windows) do
  if w.started then redis.call('PEXPIRE', key, w.per) end
end
return {claimed, next_due and fmt(next_due) or '', '', {held.limit, held.rate}}
