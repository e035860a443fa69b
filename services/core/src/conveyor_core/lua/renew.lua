#!lua flags=allow-oom
--- @include "lib/scores"
-- Renew the locks of a worker's running tries, each given with its token (see
-- lib/claim.lua): a lock is renewed only while the record's token is the
-- try's, and set again if it lapsed meanwhile (the job was not claimed again:
-- the record is still the try's). A try whose token is no longer the record's
-- is stale: nothing of it is touched. A try that just ended (its end ran
-- before this renewal) gets no lock again. It overwrites locks of the same
-- size, so a full Redis lets it run: a running job keeps its lock. With the
-- queue (ARGV[2], the time), a renewed job's queue entry moves to its lock's
-- new end, as the claim put it at the first one: the claim's scan does not
-- read running jobs, however long they run.
--
-- One call per queue shard (store/lifecycle.py): its tries' keys share a slot.
--
-- KEYS: per try, its record and its lock (arq's in-progress key); then the
--       queue, when ARGV[2] is given
-- ARGV: 1 lock ttl ms, 2 now ms or '' (no queue), 3.. job id, token, ... (in
--       the order of KEYS)
-- Returns the ids of the stale tries.
local ttl, stale = ARGV[1], {}
local queue = ARGV[2] ~= '' and KEYS[#KEYS] or nil
local lock_end = queue and tonumber(ARGV[2]) + tonumber(ttl)
for i = 3, #ARGV, 2 do
  local id, token, n = ARGV[i], ARGV[i + 1], i - 2
  local r = redis.call('HMGET', KEYS[n], 'state', 'token', 'priority')
  if r[2] ~= token then
    stale[#stale + 1] = id
  elseif r[1] == 'in_progress' then
    redis.call('SET', KEYS[n + 1], token, 'PX', ttl)
    if queue then
      local base = band_base(tonumber(r[3]) or K.default_priority)
      redis.call('ZADD', queue, 'XX', fmt(base + lock_end), id)
    end
  end
end
return stale
