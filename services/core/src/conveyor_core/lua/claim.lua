#!lua
--- @include "lib/scores"
--- @include "lib/claim"
-- One poll of a worker, in one round trip: claim up to ARGV[3] due jobs, start
-- each one's record, and say when the next deferred job falls due. The claim
-- itself is lib/claim.lua's, which finish.lua shares.
--
-- KEYS: 1 queue, 2 the queue's paused flag, 3 its flow hash, 4 its waiting hash;
--       then, declared (see store/declared.py, claim_keys): its indexes, and
--       with limited types the marks' flag, the lapsed-lock check and each
--       limited type's running count, start log, hold and ring
-- ARGV: 1 now ms, 2 lock ttl ms, 3 how many to claim, 4 scan limit,
--       5 cancelled retention ms, 6 limits JSON or '', 7 the claim's nonce (tokens)
-- Returns {{id, due ms, try, token, arq job bytes, ...}, next due ms or '',
--   paused-at ms or '', {passed over for a limit, for a rate, for a hold}}.
local claimed, next_due, paused_at, held = claim_jobs(KEYS[1], tonumber(ARGV[1]), ARGV[2],
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7])
if paused_at then return {{}, '', paused_at, {0, 0, 0}} end
return {claimed, next_due and fmt(next_due) or '', '', {held.limit, held.rate, held.held}}
