#!lua
-- Register an uploaded document: its record, the record's expiry and its
-- place in the expiry index, in one step (a cluster takes no MULTI), so no
-- record is ever left without an expiry.
--
-- KEYS: 1 document hash, 2 documents-by-expiry sorted set
-- ARGV: 1 document id, 2 ttl s, 3 expires at ms, then field/value pairs
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
