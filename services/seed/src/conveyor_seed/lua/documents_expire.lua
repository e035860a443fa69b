#!lua flags=allow-oom
-- Remove up to ARGV[2] documents whose retention ended: record and index
-- entry together (their blobs go next, from the caller).
--
-- KEYS: 1 documents-by-expiry sorted set
-- ARGV: 1 now ms, 2 batch size, 3 document key prefix
-- Returns the ids removed.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[3] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return ids
