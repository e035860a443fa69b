#!lua
--- @include "lib/group"
-- Create a group (groups.py): its hash, counting down from its total, before
-- any member exists (group_submit.lua adds them, a chunk per call), so a
-- member that ends at once is counted. A group that exists is left as it is:
-- its creator's next try resumes it (its members are submitted again, and
-- those that exist are skipped). A group of no members is done at once.
--
-- KEYS: 1 the group's hash, 2 the creating job's record or '' (it lists the
--       group as `group:{id}` = total, as submit.lua lists a child)
-- ARGV: 1 group id, 2 now ms, 3 how long an open group lives (ms), 4 total,
--       5.. more field/value pairs (policy, kind, created_by, parent_id,
--       continuations and their fields, queues)
-- Returns 1 when created, 0 when it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now, total = tonumber(ARGV[2]), tonumber(ARGV[4])
local fields = {'total', total, 'remaining', total, 'dead', 0, 'cancelled', 0, 'state', 'running',
  'created_at_ms', now}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'group:' .. ARGV[1], total)
end
if total == 0 then group_finish(KEYS[1], ARGV[1], now) end
return 1
