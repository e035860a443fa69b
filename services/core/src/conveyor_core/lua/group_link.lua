#!lua
-- A group started by a running job: the job's record lists it as
-- `group:{id}` = its total, when the record still exists. A call of its own
-- after the group's creation when the record is in another slot than the
-- group's hash (a cluster's; group_create.lua sets it in the same call
-- otherwise). Setting the field again is harmless.
--
-- KEYS: 1 the job's record.  ARGV: 1 group id, 2 total
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'group:' .. ARGV[1], ARGV[2])
  return 1
end
return 0
