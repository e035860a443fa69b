#!lua flags=allow-oom
-- Renew the locks of a worker's running tries, each given with its token (see
-- lib/claim.lua): a lock is renewed only while the record's token is the
-- try's, and set again if it lapsed meanwhile (the job was not claimed again:
-- the record is still the try's). A try whose token is no longer the record's
-- is stale: nothing of it is touched. A try that just ended (its end ran
-- before this renewal) gets no lock again. It overwrites locks of the same
-- size, so a full Redis lets it run: a running job keeps its lock.
--
-- One call per queue shard (store/lifecycle.py): its tries' keys share a slot.
--
-- KEYS: per try, its record and its lock (arq's in-progress key)
-- ARGV: 1 lock ttl ms, 2.. job id, token, ... (in the order of KEYS)
-- Returns the ids of the stale tries.
local ttl, stale = ARGV[1], {}
for i = 2, #ARGV, 2 do
  local id, token, n = ARGV[i], ARGV[i + 1], i - 1
  local r = redis.call('HMGET', KEYS[n], 'state', 'token')
  if r[2] ~= token then
    stale[#stale + 1] = id
  elseif r[1] == 'in_progress' then
    redis.call('SET', KEYS[n + 1], token, 'PX', ttl)
  end
end
return stale
