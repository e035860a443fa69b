-- One poll of a worker, in one round trip: claim up to ARGV[3] due jobs and
-- say when the next deferred one falls due.
--
-- A job is claimable when it is due and not locked, the check arq's
-- start_jobs makes per job in a WATCH/MULTI transaction; the lock is arq's own
-- in-progress key. arq keeps running jobs in the queue until they finish, so
-- the scan skips locked ones, reading at most ARGV[5] entries.
--
-- KEYS: 1 queue
-- ARGV: 1 now ms, 2 lock ttl ms, 3 how many to claim, 4 in-progress key prefix,
--       5 scan limit
-- Returns {{id, score, id, score, ...}, next due score or ''}
local now, lock_ms, wanted, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local scan_limit, batch = tonumber(ARGV[5]), 50
local claimed = {}
local offset = 0
while #claimed < 2 * wanted and offset < scan_limit do
  local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', offset, batch)
  for i = 1, #rows, 2 do
    if #claimed >= 2 * wanted then break end
    if redis.call('EXISTS', prefix .. rows[i]) == 0 then
      redis.call('PSETEX', prefix .. rows[i], lock_ms, '1')
      claimed[#claimed + 1] = rows[i]
      claimed[#claimed + 1] = rows[i + 1]
    end
  end
  if #rows < 2 * batch then break end
  offset = offset + batch
end
local upcoming = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {claimed, upcoming[2] or ''}
