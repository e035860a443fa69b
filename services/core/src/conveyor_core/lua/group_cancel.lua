#!lua flags=allow-oom
--- @include "lib/keys"
-- Cancel a group (groups.py): its continuations will not start, whatever its
-- members do from now on; the caller then cancels the members and any
-- continuation already started, a bounded chunk per call (bulk.lua).
--
-- KEYS: 1 the group's hash
-- ARGV: 1 group id, 2 now ms
-- Returns the state the group was in ('' when there is no such group).
local g = redis.call('HMGET', KEYS[1], 'state', 'continuations')
local state = g[1]
if not state then return '' end
if state == 'running' or state == 'failed' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancelled_at_ms', ARGV[2])
  redis.call('SPUBLISH', group_channel(ARGV[1]), 'cancelled')
end
-- A finished group's continuations still in its shard's outbox (a cluster's:
-- lib/group.lua) will not start either; one a drain took already and may be
-- starting now, the drain cancels once it sees cancelled_at_ms
-- (group_outbox.lua, 'cancelled').
local shard = string.match(ARGV[1], '^{([^}]*)}')
if state == 'done' and shard then
  redis.call('HSET', KEYS[1], 'cancelled_at_ms', ARGV[2])
  for n = 1, tonumber(g[2]) or 0 do redis.call('ZREM', qkey(shard, 'outbox'), ARGV[1] .. '\n' .. n) end
end
return state
