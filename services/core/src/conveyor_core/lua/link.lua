#!lua
-- A running job's record lists what it started: a job it enqueued as
-- `child:{id}` = job type, a group it started as `group:{id}` = total, when
-- the record still exists. A call of its own, after the child's submit or
-- the group's creation, when the record is in another slot (a job's record
-- is in its own queue shard's slot; group_create.lua sets the field in its
-- own call when the slot is the same). Setting the field again is harmless.
--
-- KEYS: 1 the running job's record.  ARGV: 1 field, 2 value
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
