#!lua
-- A job enqueued by a running job: its workflow's parent lists it as
-- `child:{id}` = job type, when the parent's record still exists. A call of
-- its own after the child's submit: the parent's record is in its own queue
-- shard's slot. Setting the field again is harmless.
--
-- KEYS: 1 the parent's record.  ARGV: 1 child job id, 2 job type
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'child:' .. ARGV[1], ARGV[2])
  return 1
end
return 0
