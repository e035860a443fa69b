#!lua
-- Set fields of a document that still exists: a job that runs while cleanup
-- removes its document must not bring back a partial hash without expiry.
--
-- KEYS: 1 document hash
-- ARGV: field/value pairs
-- Returns 1 when set, 0 when the document is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
