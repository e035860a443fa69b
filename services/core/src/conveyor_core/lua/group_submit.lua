#!lua
--- @include "lib/scores"
--- @include "lib/fairness"
--- @include "lib/history"
-- A chunk of a group's members (groups.py), each created as submit.lua
-- creates a job that is due now (arq's job key, SET NX, and its queue
-- entry; a limited type's flow entry), with one wake-up per queue and one
-- history count per job type, not one per job. A member whose id exists is
-- skipped; when resuming a group (ARGV[3] = '1'), so is one that has already
-- finished (its job key became arq's result key) or started.
--
-- KEYS: 1 the group's hash (not touched: it routes the call to the members'
--       slot on a cluster, where they share the group's shard), 2 the
--       caller's outstanding jobs (a sorted set, lua/quota.lua) or absent
--       (keys.absent: no quota, or a cluster's, added to by a call of its own);
--       the rest declare what the members' submits touch (store/groups.py)
-- ARGV: 1 now ms, 2 arq expiry ms, 3 '1' when resuming, then per member six
--       values: job id, queue, score, arq job bytes, flow entry or '', job type
-- Returns how many members were created.
local now, expiry_ms, resuming = tonumber(ARGV[1]), ARGV[2], ARGV[3] == '1'
local created, woken, counted = 0, {}, {}
for i = 4, #ARGV, 6 do
  local id, queue, score, bytes, flow, t = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4], ARGV[i + 5]
  local fresh = not resuming
    or redis.call('EXISTS', K.arq_result .. id, K.job .. id) == 0
  if fresh and redis.call('SET', K.arq_job .. id, bytes, 'NX', 'PX', expiry_ms) then
    redis.call('ZADD', queue, score, id)
    if flow ~= '' then
      redis.call('HSET', qkey(queue, 'flow'), id, flow)
      fair_enter(queue, flow, score, id)
    end
    if has(KEYS[2]) then redis.call('ZADD', KEYS[2], now, id) end
    created = created + 1
    woken[queue] = id
    local seen = queue .. '\n' .. t
    counted[seen] = (counted[seen] or 0) + 1
  end
end
for queue, id in pairs(woken) do redis.call('SPUBLISH', wake_channel(queue), id) end
for seen, n in pairs(counted) do
  local queue, t = string.match(seen, '^([^\n]*)\n(.*)$')
  history(queue, now, t .. ':enqueued', n)
end
if has(KEYS[2]) and created > 0 and redis.call('PTTL', KEYS[2]) < tonumber(expiry_ms) then
  redis.call('PEXPIRE', KEYS[2], expiry_ms)
end
return created
