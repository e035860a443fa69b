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
-- KEYS: 1 queue, 2 the queue's paused flag
-- ARGV: 1 now ms, 2 lock ttl ms, 3 how many to claim, 4 scan limit,
--       5 cancelled retention ms
-- Returns {{id, due ms, try, ...}, next due ms or '', paused-at ms or ''}.
local queue, now, lock_ms = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local paused_at = redis.call('GET', KEYS[2])
if paused_at then return {{}, '', paused_at} end
local wanted, scan_limit, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), 50
local claimed, count_, scanned = {}, 0, 0
local next_due = nil

-- Claim from the due rows of one band; true when the band has more rows to read.
local function claim_rows(rows, base)
  for i = 1, #rows, 2 do
    if count_ >= wanted then return false end
    scanned = scanned + 1
    local id = rows[i]
    if redis.call('EXISTS', K.arq_lock .. id) == 0 then
      local rec = load(id, queue, false)
      if rec.state == 'in_progress' and rec.cancel then
        local ttl = tonumber(ARGV[5])
        transition(rec, 'cancelled', now, now + ttl, {'finished_at_ms', now}, ttl)
      elseif TERMINAL[rec.state] then
        redis.call('ZREM', queue, id) -- finished, yet back in the queue: a bare arq enqueue
      else
        local due = fmt(tonumber(rows[i + 1]) - base)
        redis.call('PSETEX', K.arq_lock .. id, lock_ms, '1')
        rec.tries = rec.tries + 1
        transition(rec, 'in_progress', now, now, {'tries', rec.tries, 'started_at_ms', now,
          'ready_at_ms', due, 'next_try_at_ms', '', 'priority', priority_of(rows[i + 1])})
        count_ = count_ + 1
        for _, v in ipairs({id, due, rec.tries}) do claimed[#claimed + 1] = v end
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
  -- What follows the due part: this band's next deferred job, or the next band.
  local after = redis.call('ZRANGEBYSCORE', queue, '(' .. fmt(base + now), '+inf', 'WITHSCORES',
    'LIMIT', 0, 1)
  if after[2] and priority_of(after[2]) == band then
    local due = tonumber(after[2]) - base
    if not next_due or due < next_due then next_due = due end
    if band == K.lowest_priority then break end
    after = redis.call('ZRANGEBYSCORE', queue, fmt(band_base(band + 1)), '+inf', 'WITHSCORES',
      'LIMIT', 0, 1)
  end
  band = after[2] and priority_of(after[2]) or nil
end
return {claimed, next_due and fmt(next_due) or '', ''}
