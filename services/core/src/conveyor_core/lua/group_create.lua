#!lua
--- @include "lib/group"
-- Create a group (groups.py): its hash, counting down from its total, before
-- any member exists (group_submit.lua adds them, a chunk per call), so a
-- member that ends at once is counted. A group that exists is left as it is:
-- its creator's next try resumes it (its members are submitted again, and
-- those that exist are skipped). A group of no members is done at once.
--
-- A group may take over its creator's place in the creator's own group
-- (ARGV[5], a member id of the group KEYS[3]; lib/group.lua, handing over):
-- that group then waits for one more end, this group's `then` continuation's.
--
-- KEYS: 1 the group's hash, 2 the creating job's record or absent (keys.absent) (it lists the
--       group as `group:{id}` = total, as submit.lua lists a child), 3 the
--       hash of the group whose place it takes, or absent
-- ARGV: 1 group id, 2 now ms, 3 how long an open group lives (ms), 4 total,
--       5 the place it takes (a member id) or '', 6.. more field/value pairs
--       (policy, kind, submitted_by, parent_id, continuations and their
--       fields, queues)
-- Returns 1 when created, 0 when it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local gid, now, total, place = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]), ARGV[5]
local fields = {'total', total, 'remaining', total, 'dead', 0, 'cancelled', 0, 'state', 'running',
  'created_at_ms', now}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
if place ~= '' and has(KEYS[3]) and redis.call('EXISTS', KEYS[3]) == 1 then
  local _, at = group_of(place)
  redis.call('HINCRBY', KEYS[3], 'remaining', 1)
  redis.call('HINCRBY', KEYS[3], 'handed', 1)
  redis.call('HSET', KEYS[3], 'handed:' .. at, gid .. '.then')
  fields[#fields + 1] = 'hands_to'
  fields[#fields + 1] = place
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if has(KEYS[2]) and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'group:' .. gid, total)
end
if total == 0 then group_finish(KEYS[1], gid, now) end
return 1
