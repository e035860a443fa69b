#!lua
-- A caller's quota of outstanding jobs (keys.py, OUTSTANDING_PREFIX): its own
-- sorted set, in a slot of its own, so the submit (in its queue shard's slot)
-- does not touch it. A submit first takes a place for its job ('take'); one
-- that creates nothing gives it back ('give'). A full set answers the ids
-- least recently checked; the caller reads their jobs (in their own slots)
-- and says which ended ('prune'): those go, the others go to the back, so the
-- next full submit checks others. A place taken by a submit that died before
-- it created its job is dropped by a prune like an ended job's (no job key).
--
-- KEYS: 1 the caller's outstanding jobs
-- ARGV: 1 'take', 'give' or 'prune', 2 now ms, then
--       take: 3 job id, 4 quota, 5 how many ids a full set answers, 6 the set's ttl ms
--       give: 3 job id
--       prune: 3.. job id, '1' (ended) or '0', ...
-- Returns take: {1} (a place taken) or {0, id, ...} (full); give, prune: {}.
local mode, now = ARGV[1], ARGV[2]
if mode == 'give' then
  redis.call('ZREM', KEYS[1], ARGV[3])
  return {}
end
if mode == 'prune' then
  for i = 3, #ARGV, 2 do
    if ARGV[i + 1] == '1' then redis.call('ZREM', KEYS[1], ARGV[i])
    else redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i]) end
  end
  return {}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  local reply = {0}
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)) do
    reply[#reply + 1] = id
  end
  return reply
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
-- The set lives at least as long as its newest job may wait to start.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return {1}
