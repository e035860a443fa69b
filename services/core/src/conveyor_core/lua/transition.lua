-- Move a job to a new state (see lib/transition.lua), and count the finished
-- try for the next digest.
--
-- KEYS: 1 job hash, 2 counts since the last digest (bumped for complete, failed, dead)
-- ARGV: 1 new state, 2 index score, 3 ttl s (0 keeps the hash forever),
--       4 allowed current states as ',a,b,' ('' allows any), 5 index prefix,
--       6 events channel, 7.. hash field/value pairs
-- Returns {1, old state} when moved, {0, current state or ''} when not.
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
local moved = transition(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], fields)
if moved[1] == 1 and (ARGV[1] == 'complete' or ARGV[1] == 'failed' or ARGV[1] == 'dead') then
  redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'job_type') .. ':' .. ARGV[1], 1)
end
return moved
