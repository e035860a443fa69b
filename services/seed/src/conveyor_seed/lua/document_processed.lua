#!lua
-- Store a document's text and summary once, and count it for the digest in
-- the same step, so a retried job neither overwrites it nor counts it twice.
--
-- KEYS: 1 document hash, 2 counts since the last digest
-- ARGV: field/value pairs (with processed_at_ms)
-- Returns 1 when stored now, 0 when it was already processed, -1 when gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'processed_at_ms') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('HINCRBY', KEYS[2], 'documents:processed', 1)
return 1
