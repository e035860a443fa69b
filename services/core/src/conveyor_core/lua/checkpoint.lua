#!lua flags=allow-oom
-- Save a running job's checkpoint (checkpoint.py: a JSON cursor of at most a
-- few KiB, checked before the call) and, when given, the progress derived
-- from it; announce the change. It replaces its field, bounded in size, so a
-- full Redis lets it run: a long job keeps its place rather than failing.
-- Fencing: as progress.lua, a save whose try token (from the claim) is no
-- longer the record's comes from a stale try and is refused.
-- KEYS: 1 job hash.  ARGV: 1 checkpoint JSON, 2 events channel, 3 token or '',
--       4 percent or '' (progress left as it is)
-- Returns 1 when saved, 0 when the job is not in progress, -1 when stale.
local r = redis.call('HMGET', KEYS[1], 'state', 'version', 'token')
if ARGV[3] ~= '' and r[1] and r[3] ~= ARGV[3] then return -1 end
if r[1] ~= 'in_progress' then return 0 end
local version = tonumber(r[2]) + 1
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[4]) end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[1], 'version', version)
redis.call('SPUBLISH', ARGV[2], version)
return 1
