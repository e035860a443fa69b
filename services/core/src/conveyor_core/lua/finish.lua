#!lua flags=allow-oom
--- @include "lib/scores"
--- @include "lib/record"
--- @include "lib/transition"
--- @include "lib/history"
--- @include "lib/claim"
-- The end of a try, as the wrapper's policy decided it: complete (with its
-- result), retrying (due again at a time), dead (the dead letters),
-- cancelled (a client's cancel reached the running job) or queued (a shutdown
-- cut it short: back in the queue, and the try it did not finish is not
-- counted). Only a job still in progress moves: a record someone else moved
-- meanwhile is left as it is. Fencing: a try whose token (ARGV[6], from its
-- claim) is no longer the record's is stale (its lock lapsed and the job was
-- claimed again): its end is refused whole, and it claims nothing. A try that counts is kept in the record as
-- `try:{n}` = "started ms, ended ms, outcome" (in the same HSET, no extra
-- command), so a job's page shows every try since its last requeue.
--
-- Finish and fetch: with ARGV[7] > 0, the slot the try freed is filled in the
-- same call, as claim.lua would (lib/claim.lua), so a busy worker takes its
-- next job with no round trip and no poll of its own (as BullMQ's
-- moveToFinished does).
--
-- Snoozed: the handler asked to run again later (Snooze), or met a partner's
-- limit (RateLimited): the job is retrying, due at the score, and the try is
-- not counted (as a put-back); it is kept as `snooze:{k}` = "started ms, ended
-- ms, try" (k counts the job's snoozes, `snoozes`). With a hold (ARGV[13],
-- "type {ms}" or "key {ms}"), the job's type or its key (a limited type's,
-- lib/claim.lua) is held that long: no job of it starts meanwhile (a longer
-- hold in force stays).
--
-- KEYS: 1 queue; then, declared (named here too, see store/declared.py): the
--       job's record, arq job key, lock and result key, its group's keys, the
--       queue's flow and waiting hashes, the in_progress index and the new
--       state's, the minute's history, a limited type's running count, hold
--       and ring and the marks' flag (and, finish and fetch, the paused flag
--       and the claim's keys: store/declared.py, claim_keys)
-- ARGV: 1 job id, 2 new state (or 'snoozed'), 3 now ms, 4 score (due time for
--       retrying, snoozed and queued, retention ms for the final states), 5
--       job type for the history ('' for none), 6 the try's token ('' to end
--       any try), 7 how many jobs to claim (0: none), 8 lock ttl ms, 9 scan
--       limit, 10 cancelled retention ms, 11 limits JSON or '', 12 the
--       claim's nonce (as claim.lua's), 13 the hold ('' for none), 14 the job's
--       data as its claim returned it ('' to read it: lib/arq_result.lua), 15..
--       hash field/value pairs
-- Returns {1, version} when moved, {0, 'stale'} when refused, {0, current
-- state or ''} when not in progress, then what the claim returns (as
-- claim.lua), or nothing when none was asked for.
local id, to, now, arg = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local token, fetch = ARGV[6], tonumber(ARGV[7])

-- The slot's next job, after the end of this try (or instead of it). The
-- end's changes to the running counts (`tally`, lib/flow.lua) are written
-- with the claim's, once.
local function fetched(reply, tally)
  if fetch <= 0 then
    if tally then flow_write(KEYS[1], tally) end
    return reply
  end
  local claimed, next_due, paused_at, held = claim_jobs(KEYS[1], now, ARGV[8], fetch,
    tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11], ARGV[12], tally)
  if paused_at then return {reply[1], reply[2], {}, '', paused_at, {0, 0, 0}} end
  return {reply[1], reply[2], claimed, next_due and fmt(next_due) or '', '',
    {held.limit, held.rate, held.held}}
end

local rec = load(id, KEYS[1], true)
if rec and token ~= '' and rec.token ~= token then return {0, 'stale'} end
if not rec or rec.state ~= 'in_progress' then return fetched({0, rec and rec.state or ''}) end
-- The job's data as the claim read it: a final state turns it into arq's
-- result key without reading it again (the try is the live one: unchanged).
if ARGV[14] ~= '' then rec.job_data = ARGV[14] end
if rec.flow then rec.tally = new_tally() end
local fields = {}
for i = 15, #ARGV do fields[#fields + 1] = ARGV[i] end
local version
if to == 'snoozed' then
  local snoozes = redis.call('HINCRBY', K.job .. id, 'snoozes', 1)
  for _, v in ipairs({'tries', rec.tries - 1, 'snooze:' .. snoozes,
      (rec.started or '') .. ' ' .. now .. ' ' .. rec.tries}) do
    fields[#fields + 1] = v
  end
  local scope, hold_ms = string.match(ARGV[13], '^(%a+) (%d+)$')
  local t, key = nil, ''
  if rec.flow then t, key = flow_parts(rec.flow) end
  if t and hold_ms then
    local hold = scope == 'key' and key ~= '' and hold_key_of(rec.queue, t, key)
      or hold_key(rec.queue, t)
    if redis.call('PTTL', hold) < tonumber(hold_ms) then
      redis.call('SET', hold, now, 'PX', hold_ms)
    end
  end
  version = transition(rec, 'retrying', now, arg, fields, 0)
elseif to == 'queued' or to == 'retrying' then
  if to == 'queued' then
    rec.tries = rec.tries - 1
    for _, v in ipairs({'tries', rec.tries}) do fields[#fields + 1] = v end
  end
  if to == 'retrying' then
    for _, v in ipairs({'try:' .. rec.tries, (rec.started or '') .. ' ' .. now .. ' ' .. to}) do
      fields[#fields + 1] = v
    end
  end
  version = transition(rec, to, now, arg, fields, 0)
else
  fields[#fields + 1] = 'try:' .. fmt(rec.tries)
  fields[#fields + 1] = (rec.started or '') .. ' ' .. ARGV[3] .. ' ' .. to
  version = transition(rec, to, now, now + arg, fields, arg)
end
if to == 'queued' then redis.call('SPUBLISH', wake_channel(rec.queue), id) end
-- History: a try that counts is counted by its outcome, named as the state
-- it left the job in, in the minute it ended, with its queue wait (due to
-- start); `started` is their sum.
if to ~= 'queued' and ARGV[5] ~= '' then
  local started = tonumber(rec.started) or now
  local wait = math.max(started - (tonumber(rec.ready) or started), 0)
  if wait > 0 then history(rec.queue, now, ARGV[5] .. ':wait_ms', wait) end
  history(rec.queue, now, ARGV[5] .. ':' .. to, 1)
end
return fetched({1, version}, rec.tally)
