#!lua
--- @include "lib/group"
-- Start a continuation taken from its group's outbox (group_outbox.lua) in
-- its own queue shard's slot, as the last member's end would have in its
-- group's slot (lib/group.lua, start_continuation: SET NX on its fixed id).
-- Asked again (its taker died before it removed the entry), it starts
-- nothing: its job key, or once it ended its result key and record, exist.
--
-- KEYS: 1 arq's job key, 2 arq's result key, 3 the job's record, 4 its queue;
--       the rest declare what the start touches (its flow hash, key queue and
--       ring, the minute's history)
-- ARGV: 1 now ms, 2 job id, 3 queue, 4 priority, 5 flow entry or '',
--       6 job type, 7 arq job bytes
-- Returns 1 when it started the continuation, 0 when it had been.
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then return 0 end
local g = {['c1:id'] = ARGV[2], ['c1:queue'] = ARGV[3], ['c1:priority'] = ARGV[4],
  ['c1:flow'] = ARGV[5], ['c1:type'] = ARGV[6], ['c1:bytes'] = ARGV[7]}
start_continuation(g, 1, tonumber(ARGV[1]), '')
return 1
