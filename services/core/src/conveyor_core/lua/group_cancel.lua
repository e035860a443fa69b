#!lua flags=allow-oom
--- @include "lib/keys"
-- Cancel a group (groups.py): its continuations will not start, whatever its
-- members do from now on; the caller then cancels the members and any
-- continuation already started, a bounded chunk per call (bulk.lua).
--
-- KEYS: 1 the group's hash
-- ARGV: 1 group id, 2 now ms
-- Returns the state the group was in ('' when there is no such group).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'running' or state == 'failed' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancelled_at_ms', ARGV[2])
  redis.call('SPUBLISH', group_channel(ARGV[1]), 'cancelled')
end
return state
