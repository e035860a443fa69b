#!lua flags=allow-oom
-- Record a running job's progress and announce it. It overwrites two fields, so a
-- full Redis lets it run: a report must not fail the job.
-- Fencing: a report whose try token (from the claim) is no longer the
-- record's comes from a stale try and is refused.
-- KEYS: 1 job hash.  ARGV: 1 percent, 2 message, 3 events channel, 4 token or ''
-- Returns 1 when recorded, 0 when the job is not in progress, -1 when stale.
local r = redis.call('HMGET', KEYS[1], 'state', 'version', 'token')
if ARGV[4] ~= '' and r[1] and r[3] ~= ARGV[4] then return -1 end
if r[1] ~= 'in_progress' then return 0 end
local version = tonumber(r[2]) + 1
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_message', ARGV[2], 'version', version)
redis.call('SPUBLISH', ARGV[3], version)
return 1
