--- @include "lib/keys"
--- @include "lib/scores"
--- @include "lib/record"
--- @include "lib/transition"

-- Claiming: the function claim.lua runs on each poll of a worker, and
-- finish.lua runs after the end of a try to fill the slot it freed ("finish
-- and fetch": the next job comes back with the end of the last, with no round
-- trip or poll of its own).
--
-- A job is claimable when it is due and not locked, the check arq's
-- start_jobs makes per job in a WATCH/MULTI transaction; the lock is arq's own
-- in-progress key. A running job stays in the queue until it ends, as arq
-- keeps it, but its entry is due again only when its lock lapses (its score
-- is moved to the lock's end, in its band, and again by each renewal:
-- renew.lua): a worker that dies leaves it claimable then, and meanwhile the
-- scan does not read it. A due entry that is locked (one an older worker
-- claimed, or whose renewal came late) is passed over, reading at most
-- `scan_limit` due entries; the locks of a batch of entries (with the job
-- data of the first batch, which mostly starts, and, the first time, the
-- queue's paused flag) are read with one MGET. A job whose worker died while
-- a cancel was pending is cancelled here, not started. A paused queue starts nothing, and
-- the next due time is left out: its workers sleep until resume wakes them.
--
-- Priorities are bands of scores (see scores.py, queue_score): the scan reads
-- arq's queue in score order, highest priority first; the first entry of a
-- band that is not due yet is that band's next due time, and the scan jumps to
-- the next band (a lookup of its first entry). A queue of one priority costs
-- one read of entries and one MGET per call, besides the jobs it claims.
--
-- Limits (flow.py): with `limits` (the queue's limited types, JSON), each
-- candidate's type comes from its job data (arq's JSON starts with its try
-- and its function, the job type) and a keyed type's key from its flow
-- entry; a job over a running limit or a rate is passed over (it stays
-- queued, takes no slot, uses no try), the first time per type or key and
-- call recorded in the waiting hash (why it waits), and a rate's earliest next
-- start becomes a due time for the worker's sleep. The types' holds and
-- running counts come with the first MGET; a call's changes to the counts are
-- written once, at its end (lib/flow.lua). Running counts heal themselves: at
-- a limit, at most once per lock ttl, the running jobs whose lock lapsed (a
-- dead worker's) stop counting; such a job counts again when it is claimed
-- again. Without limits none of this runs: unlimited queues cost what they did.
--
-- Fencing: each job started gets a token, `{nonce}:{n}` (the worker's random
-- nonce for this call, and the job's place in it), held by its lock and its
-- record (`token`); every later call of that try (its end, progress, lock
-- renewal) carries it, and one whose token is no longer the record's is
-- refused (a stale try: its lock lapsed and the job was claimed again).

-- How many starts a start log takes between trims of the starts that left it.
local TRIM_EVERY = 16

-- How many running jobs the check for lapsed locks reads at most.
local CHECK_LAPSED = 1000

-- What a job of a limited type must pass: its holds and its checks ({'n',
-- running count, max, subject, 't' or 'k'} or {'r', start log, rate,
-- subject}), for flow entry "t\nkey" (key '' for none) of limits `l`.
local function flow_checks_of(queue, t, key, l)
  local checks = {t = t, hold = hold_key(queue, t)}
  local subject = key ~= '' and t .. '\n' .. key
  if subject then checks.key_hold, checks.subject = hold_key_of(queue, t, key), subject end
  -- The running limits first: a rate's check records the start (see flow_take_start).
  if l.n then checks[#checks + 1] = {'n', count_key(queue, t), l.n, t, 't'} end
  if subject and l.kn then checks[#checks + 1] = {'n', count_key_of(queue, t, key), l.kn, subject, 'k'} end
  if l.r then checks[#checks + 1] = {'r', starts_key(queue, t), l.r, t} end
  if subject and l.kr then checks[#checks + 1] = {'r', starts_key_of(queue, t, key), l.kr, subject} end
  return checks
end

-- A queue's flow plan for its limits (JSON): the limits, decoded; the keys the
-- claim's first MGET reads for them (`head`: the marks' flag, then each
-- limited type's hold, one that is absent, as nearly all are, needing no PTTL
-- of its own, and its running count); and the checks of each type's jobs
-- without a key. Plans are kept from call to call, by limits and queue (a
-- function library's top level lives while it is loaded; limits change with
-- a deploy), at most PLANS_KEPT, then all are dropped at once. Read only.
local PLANS_KEPT = 256
local plans, plans_count = {}, 0
local function plan_of(queue, limits_json)
  local by_queue = plans[limits_json]
  local plan = by_queue and by_queue[queue]
  if plan then return plan end
  if plans_count >= PLANS_KEPT then plans, plans_count = {}, 0 end
  local limits = cjson.decode(limits_json)
  plan = {limits = limits, head = {marked_key(queue)}, is_count = {}, checks = {}}
  for t, l in pairs(limits) do
    plan.head[#plan.head + 1] = hold_key(queue, t)
    if l.n then
      plan.head[#plan.head + 1] = count_key(queue, t)
      plan.is_count[#plan.head] = true
    end
    plan.checks[t .. '\n'] = flow_checks_of(queue, t, '', l)
  end
  by_queue = plans[limits_json] or {}
  by_queue[queue], plans[limits_json], plans_count = plan, by_queue, plans_count + 1
  return plan
end

-- Flow control's state for one call of claim_jobs (see above), made only when
-- the queue has limited types: its plan; `held` counts what was passed over,
-- `started` holds the jobs the call started, `sooner` takes a due time for the
-- worker's sleep, `tally` the call's changes to the running counts and marks
-- (lib/flow.lua). `v`, by key: each running count as read (the tally holds
-- this call's changes), each start log's state, each hold's time left (ms, as
-- PTTL), and each keyed flow entry's checks. `checked`: whether this call
-- looked for running jobs whose lock lapsed.
local function flow_context(plan, queue, now, lock_ttl, held, started, sooner, tally)
  return {plan = plan, limits = plan.limits, queue = queue, now = now, now_s = fmt(now),
    lock_ttl = lock_ttl,
    held = held, started = started, sooner = sooner, tally = tally, v = {}, checked = false}
end

-- The values of the plan's `head`, from the MGET's `first` value on.
local function flow_read_head(f, values, first)
  local head, is_count, v = f.plan.head, f.plan.is_count, f.v
  f.tally.flagged = values[first] ~= false
  for i = 2, #head do
    local value = values[first + i - 1]
    if is_count[i] then v[head[i]] = tonumber(value or 0)
    elseif not value then v[head[i]] = -2 end -- PTTL's answer for no key
  end
end

-- At a running limit, at most once per lock ttl: the running jobs whose lock
-- lapsed (a dead worker's) stop counting. Returns whether any did.
local function flow_release_lapsed(f)
  f.checked = true
  if not redis.call('SET', healed_key(f.queue), fmt(f.now), 'PX', fmt(f.lock_ttl), 'NX') then
    return false -- another call looked less than a lock ttl ago
  end
  local old = redis.call('ZRANGEBYSCORE', index(f.queue, 'in_progress'), '-inf',
    fmt(f.now - f.lock_ttl), 'LIMIT', 0, CHECK_LAPSED)
  if #old == 0 then return false end
  local locks = {}
  for i, id in ipairs(old) do locks[i] = K.arq_lock .. id end
  local live, freed = redis.call('MGET', unpack(locks)), false
  for i, id in ipairs(old) do
    if not live[i] then
      local r = redis.call('HMGET', K.job .. id, 'flow', 'counted')
      if r[1] and r[2] and r[2] ~= '' then
        release({queue = f.queue, id = id, flow = r[1], counted = r[2], tally = f.tally})
        redis.call('HSET', K.job .. id, 'counted', '')
        freed = true
      end
    end
  end
  return freed
end

local function flow_running_count(f, ckey, max)
  local n = f.v[ckey]
  if n == nil then
    n = tonumber(redis.call('GET', ckey) or 0)
    f.v[ckey] = n
  end
  n = n + (f.tally[ckey] or 0)
  if n >= max and not f.checked and flow_release_lapsed(f) then
    return flow_running_count(f, ckey, max)
  end
  return n
end

-- A rate's starts: its start log (a list of start times, oldest first, as
-- the claims append them) holds at least every start of the last period.
-- Stale starts (a period old or more) go from its head: every TRIM_EVERY
-- starts (at most TRIM_CHUNKS chunks of TRIM_CHUNK each time, so a burst's
-- starts go much faster than they came), and when the log is longer than its
-- max and a start fits. Returns how many went.
local TRIM_CHUNK, TRIM_CHUNKS = 64, 4
local function flow_trim_log(key, stale_at)
  local dropped = 0
  for _ = 1, TRIM_CHUNKS do
    local head = redis.call('LRANGE', key, 0, TRIM_CHUNK - 1)
    local k = 0
    while k < #head and tonumber(head[k + 1]) <= stale_at do k = k + 1 end
    dropped = dropped + k
    if k > 0 then redis.call('LTRIM', key, k, -1) end
    if k < TRIM_CHUNK then break end
  end
  return dropped
end

-- A start of a job of a rate `rate` ({max, per ms}): recorded in log `key`
-- when it fits (nil), else not, and the time (ms) the log allows the next
-- one. It fits when the max-th newest start before it is stale: the push's
-- reply (the log's length) says there is none, as under a rate that does not
-- bind. (Claims that run on clocks a few ms apart may append out of order:
-- such a start is dropped a little late, never early.)
local function flow_take_start(f, key, rate)
  local max, per = rate[1], rate[2]
  local n = redis.call('RPUSH', key, f.now_s)
  local w = f.v[key]
  if not w then
    w = {per = per}
    f.v[key] = w
    f.windows = f.windows or {}
    f.windows[#f.windows + 1] = key
  end
  if n % TRIM_EVERY == 0 then
    local dropped = flow_trim_log(key, f.now - per)
    if dropped > 0 then n, w.trimmed = n - dropped, true end
  end
  if n <= max then return nil end
  local edge = tonumber(redis.call('LINDEX', key, n - 1 - max))
  if edge <= f.now - per then
    redis.call('LTRIM', key, n - max, -1) -- the edge and all before it are stale
    w.trimmed = true
    return nil
  end
  redis.call('RPOP', key)
  return edge + per
end

-- Starts recorded by a check that passed, taken back: the job does not start.
local function flow_take_back(checks, upto)
  for i = 1, upto or #checks do
    if checks[i][1] == 'r' then redis.call('RPOP', checks[i][2]) end
  end
end

local function flow_mark(f, subject, reason)
  f.held[reason] = f.held[reason] + 1
  local tally = f.tally
  tally.marked = tally.marked or {}
  if not tally.marked[subject] then
    tally.marked[subject] = true
    redis.call('HSET', qkey(f.queue, 'waiting'), subject, reason)
    if not tally.flagged then
      redis.call('SET', marked_key(f.queue), '1')
      tally.flagged = true
    end
  end
end

-- A hold on the type or key (a partner's 429): its time left (ms), or nil.
local function flow_hold_left(f, hkey)
  local left = f.v[hkey]
  if left == nil then
    left = redis.call('PTTL', hkey)
    f.v[hkey] = left
  end
  if left > 0 then return left end
  return nil
end

-- The checks a job of a limited type must pass: nil when it may start now,
-- else the reason; the checks to count if it does start (its start is in its
-- rates' logs already: flow_take_back if it does not start after all). A
-- hold comes first; its end becomes a due time for the worker's sleep.
local function flow_gate(f, flow)
  local checks = f.plan.checks[flow] or f.v[flow]
  if checks == nil then
    local t, key = flow_parts(flow)
    local l = t and f.limits[t]
    checks = l and flow_checks_of(f.queue, t, key, l) or false
    f.v[flow] = checks
  end
  if not checks then return nil, nil end
  local left = flow_hold_left(f, checks.hold)
  if left then
    f.sooner(f.now + left)
    flow_mark(f, checks.t, 'held')
    return 'held', nil
  end
  if checks.key_hold then
    left = flow_hold_left(f, checks.key_hold)
    if left then f.sooner(f.now + left) flow_mark(f, checks.subject, 'held') return 'held', nil end
  end
  for i, c in ipairs(checks) do
    if c[1] == 'n' then
      if flow_running_count(f, c[2], c[3]) >= c[3] then
        flow_mark(f, c[4], 'limit')
        return 'limit', nil
      end
    else
      local next_at = flow_take_start(f, c[2], c[3])
      if next_at then
        flow_take_back(checks, i - 1) -- a type's start, when its key's rate holds it
        f.sooner(next_at)
        flow_mark(f, c[4], 'rate')
        return 'rate', nil
      end
    end
  end
  return nil, checks
end

-- A limited job starts: it counts as running (in the tally; its start is in
-- its rates' logs already). A job claimed again after its lock lapsed still holds the counts
-- it took (unless the check for lapsed locks let them go). Returns the
-- counts it holds, for its record (`counted`, see lib/flow.lua). A mark of
-- its type or key stays until one of its jobs ends (see release).
local function flow_count_start(f, rec, checks)
  local kept = rec.state == 'in_progress' and rec.counted
  if kept then return kept end
  local counted = ''
  for _, c in ipairs(checks) do
    if c[1] == 'n' then
      tally_count(f.tally, c[2], 1)
      counted = counted .. c[5]
    end
  end
  return counted
end

-- Keys take turns: a slot that falls to a keyed job goes to the next key of
-- its type's ring that has a job due in this band and may start now (at most
-- 10 keys are tried). Returns that job's id, score, flow entry and checks, or
-- nil when no key may start one.
local function flow_take_turn(f, t, base)
  local ring = ring_key(f.queue, t)
  for _ = 1, math.min(redis.call('LLEN', ring), 10) do
    local key = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    if not key then return nil end
    local row = redis.call('ZRANGEBYSCORE', keyq_key(f.queue, t, key), fmt(base),
      fmt(base + f.now), 'WITHSCORES', 'LIMIT', 0, 1)
    if row[1] and not f.started[row[1]] and redis.call('EXISTS', K.arq_lock .. row[1]) == 0 then
      local flow = t .. '\n' .. key
      local held_for, checks = flow_gate(f, flow)
      if not held_for then return row[1], row[2], flow, checks end
      if f.tally.marked and f.tally.marked[t] then return nil end -- the whole type is held
    end
  end
  return nil
end

-- Each start log's expiry: two periods and a minute, set again once a period
-- has passed (by the claims' clocks, which may differ by less than that
-- minute) or when the call trimmed it (a trim may empty and so delete it),
-- so it outlives every start by a period: most calls set none. When it was
-- last set, by log, is kept from call to call (as plans are, at most
-- EXPIRIES_KEPT, then all are forgotten: each is then set again).
local EXPIRY_SLACK_MS, EXPIRIES_KEPT = 60000, 10000
local expiry_set_at, expiries_count = {}, 0

local function flow_renew_windows(f)
  for _, key in ipairs(f.windows or {}) do
    local w = f.v[key]
    local set_at = expiry_set_at[key]
    if w.trimmed or not set_at or f.now >= set_at + w.per or f.now < set_at then
      redis.call('PEXPIRE', key, 2 * w.per + EXPIRY_SLACK_MS)
      if not set_at then
        if expiries_count >= EXPIRIES_KEPT then expiry_set_at, expiries_count = {}, 0 end
        expiries_count = expiries_count + 1
      end
      expiry_set_at[key] = f.now
    end
  end
end

-- A job's flow entry ("type\nkey"): its type from its job data (arq's JSON
-- starts with its try and its function, the job type) and a keyed type's key
-- from the flow hash (see flow.py); nil for a type without limits. A job
-- whose data is not arq's JSON has only what the flow hash says.
local function flow_of(limits, flow_key, id, job)
  local t = job and string.match(job, '^{"t":[^,]*,"f":"([^"\\]*)"')
  if t and not limits[t] then return nil end
  if t and not limits[t].k then return t .. '\n' end
  return redis.call('HGET', flow_key, id) or (t and t .. '\n') or nil
end

-- The claim of claim_jobs (below), its flow control's writes left in `tally`
-- (nil for a queue without limits).
local function claim_scan(queue, now, lock_ms, wanted, scan_limit, cancelled_ttl, limits_json,
    nonce, tally)
  local flow_key = qkey(queue, 'flow')
  local lock_ttl, now_s = tonumber(lock_ms), fmt(now)
  local plan = limits_json ~= '' and plan_of(queue, limits_json) or nil
  local limits = plan and plan.limits
  local claimed, count_, scanned = {}, 0, 0
  local next_due = nil
  local held = {limit = 0, rate = 0, held = 0}
  -- Jobs started in this call (a key's turn may start one the scan reads later).
  local started = {}

  local function sooner(due) if not next_due or due < next_due then next_due = due end end

  -- Flow control's state (see flow_context), or nil.
  local f = plan and flow_context(plan, queue, now, lock_ttl, held, started, sooner, tally)

  -- Types (and bands) whose turn found no key that may start a job, in this call.
  local no_turn = {}

  -- Start one job: lock it, count it against its limits, start its record.
  -- `job` is its arq job data as the scan read it (false: gone), or nil
  -- when not read yet (a key's turn).
  local function start(id, score, base, flow, checks, job)
    started[id] = true
    local rec = load(id, queue, false)
    rec.tally = tally
    if rec.state == 'in_progress' and rec.cancel then
      if checks then flow_take_back(checks) end
      transition(rec, 'cancelled', now, now + cancelled_ttl, {'finished_at_ms', now},
        cancelled_ttl)
      return
    elseif TERMINAL[rec.state] then
      if checks then flow_take_back(checks) end
      redis.call('ZREM', queue, id) -- finished, yet back in the queue: a bare arq enqueue
      return
    end
    local due = fmt(tonumber(score) - base)
    local token = nonce .. ':' .. fmt(count_ + 1)
    redis.call('PSETEX', K.arq_lock .. id, lock_ms, token)
    -- Due again when the lock lapses (XX: it moves the entry, never adds one).
    redis.call('ZADD', queue, 'XX', fmt(base + now + lock_ttl), id)
    rec.tries = rec.tries + 1
    local fields = {'tries', fmt(rec.tries), 'started_at_ms', now_s, 'ready_at_ms', due,
      'next_try_at_ms', '', 'priority', fmt(priority_of(score)), 'token', token}
    if flow then
      -- The record keeps its flow entry and counts from try to try: each is
      -- written when it changes.
      local counted = checks and flow_count_start(f, rec, checks)
        or (rec.state == 'in_progress' and rec.counted) or ''
      if counted ~= (rec.counted or '') then
        fields[#fields + 1], fields[#fields + 2] = 'counted', counted
      end
      if flow ~= rec.flow then fields[#fields + 1], fields[#fields + 2] = 'flow', flow end
      rec.flow, rec.counted = flow, counted
    end
    transition(rec, 'in_progress', now, now, fields)
    count_ = count_ + 1
    if job == nil then job = redis.call('GET', K.arq_job .. id) end
    job = job or ''
    for _, v in ipairs({id, due, rec.tries, token, job}) do claimed[#claimed + 1] = v end
  end

  -- One due, unlocked entry of band `base`: start it, or a job of its key's
  -- turn, unless a limit holds it. `job` is its arq job data, or nil when not
  -- read yet.
  local function consider(id, score, base, job)
    local flow, t, key = nil, nil, ''
    if limits then
      if job == nil then job = redis.call('GET', K.arq_job .. id) end
      flow = flow_of(limits, flow_key, id, job)
      if flow then t, key = flow_parts(flow) end
    end
    local keyed = t and key ~= '' and limits[t]
    if keyed and not no_turn[t .. base] and redis.call('ZSCORE', keyq_key(queue, t, key), id) then
      local turn_id, turn_score, turn_flow, checks = flow_take_turn(f, t, base)
      if turn_id then start(turn_id, turn_score, base, turn_flow, checks)
      else no_turn[t .. base] = true end -- no key may start one: not asked again
      if turn_id ~= id and count_ < wanted and not started[id] then
        -- This job waits for its key's turn (if its key is held, that says why);
        -- with no turn taken at all (its key not among the keys tried), it starts
        -- itself when it may, so no keyed job can wait for ever.
        local held_for, own_checks = flow_gate(f, flow)
        if not held_for then
          if turn_id then flow_take_back(own_checks) -- it only said why it waits
          else start(id, score, base, flow, own_checks, job) end
        end
      end
    else
      local held_for, checks = nil, nil
      if flow then held_for, checks = flow_gate(f, flow) end
      if not held_for then start(id, score, base, flow, checks, job) end
    end
  end

  -- The scan: batches of entries in score order, from `lo`; a batch grows
  -- (to 100) when it was all due and not enough of it could start. Running
  -- jobs are not due (see above), so the first batch is what is wanted.
  local lo, offset, batch = '-inf', 0, math.min(wanted, 100)
  local paused_checked = false
  while count_ < wanted and scanned < scan_limit do
    local rows = redis.call('ZRANGEBYSCORE', queue, lo, '+inf', 'WITHSCORES', 'LIMIT', fmt(offset),
      fmt(batch))
    -- The due entries come first; the first one not due ends its band's part.
    local due_rows, jump = {}, nil
    for i = 1, #rows, 2 do
      local score = tonumber(rows[i + 1])
      local priority = priority_of(score)
      local base = band_base(priority)
      if score - base > now then
        sooner(score - base)
        jump = priority
        break
      end
      due_rows[#due_rows + 1] = {rows[i], score, base}
    end
    local started_before = count_
    local reads = {}
    if not paused_checked then
      reads[1] = qkey(queue, 'paused')
      if f then for _, k in ipairs(plan.head) do reads[#reads + 1] = k end end
    end
    -- Each entry's lock; in the first batch (what is wanted, which mostly
    -- starts) its job data too, which a claim returns. A later batch follows
    -- locked or held entries: its jobs' data is read as each one starts.
    local stride = offset == 0 and lo == '-inf' and 2 or 1
    for _, row in ipairs(due_rows) do
      reads[#reads + 1] = K.arq_lock .. row[1]
      if stride == 2 then reads[#reads + 1] = K.arq_job .. row[1] end
    end
    if #reads > 0 then
      local flags = redis.call('MGET', unpack(reads))
      local first = 1
      if not paused_checked then
        paused_checked, first = true, 2 + (f and #plan.head or 0)
        if f then flow_read_head(f, flags, 2) end
        if flags[1] then return {}, nil, flags[1], held end
      end
      for j, row in ipairs(due_rows) do
        if count_ >= wanted or scanned >= scan_limit then break end
        scanned = scanned + 1
        local at = first + stride * (j - 1)
        if not flags[at] and not started[row[1]] then
          local job = nil
          if stride == 2 then job = flags[at + 1] end
          consider(row[1], row[2], row[3], job)
        end
      end
    end
    if count_ >= wanted then break end -- no slot left: no next due time needed
    if jump then
      if jump >= K.lowest_priority then break end
      -- What follows this band's due part: the next band.
      lo, offset = fmt(band_base(jump + 1)), 0
    elseif #rows < 2 * batch then
      break -- the end of the queue
    else
      -- A job that started left this range (its entry is due at its lock's
      -- end): the next batch starts that many entries sooner.
      offset = offset + batch - (count_ - started_before)
      batch = math.min(batch * 2, 100)
    end
  end
  if f then flow_renew_windows(f) end
  return claimed, next_due, nil, held
end

-- Returns the claimed jobs ({id, due ms, try, token, arq job bytes or '',
-- ...}: the job's data comes with the claim, so nothing reads it before the
-- run), the next due time (ms) or nil, the time the queue was paused or nil,
-- and the due jobs passed over ({limit = n, rate = n, held = n}). `tally`
-- (lib/flow.lua) holds what the call changed before (the end of a try, in
-- finish and fetch), or nil; the running counts are written at the end.
local function claim_jobs(queue, now, lock_ms, wanted, scan_limit, cancelled_ttl, limits_json,
    nonce, tally)
  if not tally and limits_json ~= '' then tally = new_tally() end
  local claimed, next_due, paused_at, held = claim_scan(queue, now, lock_ms, wanted, scan_limit,
    cancelled_ttl, limits_json, nonce, tally)
  if tally then flow_write(queue, tally) end
  return claimed, next_due, paused_at, held
end
