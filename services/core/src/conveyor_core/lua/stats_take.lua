#!lua flags=allow-oom
-- Take over the counts since the last digest for one digest run: the first
-- try renames them to the run's own key, a retry finds that key and reports
-- the same numbers. Every count lands in exactly one run.
--
-- KEYS: 1 counts since the last digest, 2 this run's counts
-- ARGV: 1 now ms, 2 ttl s of this run's counts
-- Returns the run's counts as field, value, ... (with _taken_at_ms).
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
  redis.call('HSET', KEYS[2], '_taken_at_ms', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return redis.call('HGETALL', KEYS[2])
