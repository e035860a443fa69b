-- GCRA (generic cell rate algorithm): spend one request of a key's rate, or not.
-- The key holds the "theoretical arrival time" (TAT) in microseconds; Redis'
-- own clock is used, so every api replica shares one time and one limit.
-- Its callers are allow-oom (a full Redis still limits): one key per api key,
-- rewritten in place, and gone once its caller is back to a full burst.
-- `cost` (default 1): requests this one counts as, all or none (POST /task
-- spends one per job it enqueues).
-- Returns {allowed (1/0), retry after (us), remaining (requests)}.
local function gcra(key, interval_us, burst, cost)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local interval = tonumber(interval_us)
  local tolerance = interval * tonumber(burst)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * tonumber(cost or 1)
  local allow_at = new_tat - tolerance
  if allow_at > now then return {0, allow_at - now, 0} end
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  return {1, 0, math.floor((now - allow_at) / interval)}
end
