#!lua flags=allow-oom
--- @include "lib/record"
--- @include "lib/transition"
-- Settle a job that arq ended without running it (its job key expired, its
-- function is unknown, or it was cancelled between its claim and its start):
-- cancelled when a cancel was pending, else dead with the error given.
--
-- KEYS: 1 queue; then, declared (named here too, see store/declared.py): the
--       job's record, arq job key, lock and result key, its group's keys, the
--       queue's flow and waiting hashes, every index, and its limited types'
--       running counts, holds and rings and the marks' flag
-- ARGV: 1 job id, 2 now ms, 3 dead retention ms, 4 cancelled retention ms, 5 error JSON,
--       6 the try's token ('' for any)
-- Returns the state it was left in, 'stale' when the token is no longer the
-- record's (refused, see finish.lua), or '' when there was nothing to settle.
local id, now = ARGV[1], tonumber(ARGV[2])
local rec = load(id, KEYS[1], true)
if rec and ARGV[6] ~= '' and rec.token ~= ARGV[6] then return 'stale' end
if not rec or rec.state ~= 'in_progress' then return '' end
if rec.cancel then
  local ttl = tonumber(ARGV[4])
  transition(rec, 'cancelled', now, now + ttl, {'finished_at_ms', now}, ttl)
  return 'cancelled'
end
local ttl = tonumber(ARGV[3])
transition(rec, 'dead', now, now + ttl, {'finished_at_ms', now, 'error', ARGV[5]}, ttl)
return 'dead'
