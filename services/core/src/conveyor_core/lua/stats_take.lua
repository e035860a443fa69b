#!lua flags=allow-oom
-- Take over the counts since the last take for one run (stats.py): the job
-- modules' own counts (renamed to the run's key) and the job outcomes the
-- caller read from the history since the last take's mark. The first try
-- writes them to the run's own key and moves the mark on; a retry finds that
-- key and reports the same numbers. When another take moved the mark since
-- the caller read it, nothing is written and the caller reads again. Every
-- count lands in exactly one run.
--
-- KEYS: 1 module counts since the last take, 2 this run's counts, 3 the mark
-- ARGV: 1 now ms, 2 ttl s of this run's counts, 3 the mark as read ('' for
--       none), 4 the new mark, 5 ttl s of the mark, 6.. outcome field, count, ...
-- Returns the run's counts as field, value, ... (with _taken_at_ms), or
-- an empty list when the mark moved.
if redis.call('EXISTS', KEYS[2]) == 0 then
  if (redis.call('GET', KEYS[3]) or '') ~= ARGV[3] then return {} end
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
  for i = 6, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('HSET', KEYS[2], '_taken_at_ms', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
end
return redis.call('HGETALL', KEYS[2])
