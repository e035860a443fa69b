-- GCRA (generic cell rate algorithm): one request for one key, allowed or not.
-- The key holds the "theoretical arrival time" (TAT) in microseconds; Redis'
-- own clock is used, so every api replica shares one time and one limit.
-- KEYS: 1 the key's limiter.  ARGV: 1 emission interval (us), 2 burst (requests)
-- Returns {allowed (1/0), retry after (us), remaining (requests)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((now - allow_at) / interval)}
