#!lua
-- Pause or resume a queue. While its flag exists the claim starts nothing from
-- it (running jobs finish; enqueueing goes on); resuming deletes the flag and
-- wakes the queue's workers, so they start at once.
--
-- KEYS: 1 the queue's paused flag
-- ARGV: 1 'pause' or 'resume', 2 now ms, 3 wake channel
-- Returns {when the queue was paused (ms), or '' when it runs; 1 if this call
-- changed that, else 0 (it was paused, or running, already)}.
if ARGV[1] == 'pause' then
  local changed = redis.call('SET', KEYS[1], ARGV[2], 'NX') and 1 or 0
  return {redis.call('GET', KEYS[1]), changed}
end
local changed = redis.call('DEL', KEYS[1])
if changed == 1 then redis.call('SPUBLISH', ARGV[3], 'resume') end
return {'', changed}
