#!lua flags=allow-oom
-- Drop up to ARGV[2] entries of expired records from the front of an index
-- scored by expiry time: bounded work, whatever the index holds.
-- KEYS: 1 index.  ARGV: 1 now ms, 2 most to remove
-- Returns how many were removed.
local n = math.min(redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1]), tonumber(ARGV[2]))
if n > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1) end
return n
