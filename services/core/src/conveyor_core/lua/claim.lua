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
-- KEYS: 1 queue, 2 the queue's paused flag
-- ARGV: 1 now ms, 2 lock ttl ms, 3 how many to claim, 4 scan limit,
--       5 cancelled retention ms
-- Returns {{id, score, try, ...}, next due score or '', paused-at ms or ''}.
local queue, now, lock_ms = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local paused_at = redis.call('GET', KEYS[2])
if paused_at then return {{}, '', paused_at} end
local wanted, scan_limit, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), 50
local claimed, count_ = {}, 0
local offset = 0
while count_ < wanted and offset < scan_limit do
  local rows = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', offset, batch)
  for i = 1, #rows, 2 do
    if count_ >= wanted then break end
    local id = rows[i]
    if redis.call('EXISTS', K.arq_lock .. id) == 0 then
      local rec = load(id, queue, false)
      if rec.state == 'in_progress' and rec.cancel then
        local ttl = tonumber(ARGV[5])
        transition(rec, 'cancelled', now, now + ttl, {'finished_at_ms', now}, ttl)
      elseif TERMINAL[rec.state] then
        redis.call('ZREM', queue, id) -- finished, yet back in the queue: a bare arq enqueue
      else
        redis.call('PSETEX', K.arq_lock .. id, lock_ms, '1')
        rec.tries = rec.tries + 1
        transition(rec, 'in_progress', now, now, {'tries', rec.tries, 'started_at_ms', now,
          'ready_at_ms', rows[i + 1], 'next_try_at_ms', ''})
        count_ = count_ + 1
        for _, v in ipairs({id, rows[i + 1], rec.tries}) do claimed[#claimed + 1] = v end
      end
    end
  end
  if #rows < 2 * batch then break end
  offset = offset + batch
end
local upcoming = redis.call('ZRANGEBYSCORE', queue, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {claimed, upcoming[2] or '', ''}
