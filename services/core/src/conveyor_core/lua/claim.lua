-- One poll of a worker, in one round trip: claim up to ARGV[3] due jobs, mark
-- each one's record in progress, and say when the next deferred job falls due.
--
-- A job is claimable when it is due and not locked, the check arq's
-- start_jobs makes per job in a WATCH/MULTI transaction; the lock is arq's own
-- in-progress key. arq keeps running jobs in the queue until they finish, so
-- the scan skips locked ones, reading at most ARGV[5] entries.
--
-- Marking the record here saves the wrapper a round trip per job. The try
-- number is the one arq's run_job is about to count (its retry key + 1).
--
-- KEYS: 1 queue
-- ARGV: 1 now ms, 2 lock ttl ms, 3 how many to claim, 4 in-progress key prefix,
--       5 scan limit, 6 job hash prefix, 7 index prefix, 8 events channel,
--       9 arq retry key prefix
-- Returns {{id, score, moved, old state, ...}, next due score or ''}, with
-- moved and old state as the transition returns them.
local now, lock_ms, wanted, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local scan_limit, batch = tonumber(ARGV[5]), 50
local job_prefix, index_prefix, channel, retry_prefix = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local startable = ',waiting,failed,in_progress,'
local claimed, count = {}, 0
local offset = 0
while count < wanted and offset < scan_limit do
  local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', offset, batch)
  for i = 1, #rows, 2 do
    if count >= wanted then break end
    local id = rows[i]
    if redis.call('EXISTS', prefix .. id) == 0 then
      redis.call('PSETEX', prefix .. id, lock_ms, '1')
      local tries = tonumber(redis.call('GET', retry_prefix .. id) or '0') + 1
      local fields = {'tries', tries, 'started_at_ms', now, 'next_try_at_ms', ''}
      local moved = transition(job_prefix .. id, 'in_progress', now, 0, startable,
        index_prefix, channel, fields)
      count = count + 1
      for _, v in ipairs({id, rows[i + 1], moved[1], moved[2]}) do claimed[#claimed + 1] = v end
    end
  end
  if #rows < 2 * batch then break end
  offset = offset + batch
end
local upcoming = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {claimed, upcoming[2] or ''}
