--- @include "lib/keys"

-- Flow control's writes (flow.py, lib/claim.lua): the running counts and the
-- marks of what the claim found blocked.
--
-- A job of a limited type counts in its type's running count and its key's
-- (strings, see keys.lua) from its start to its leaving in_progress; its
-- record's `counted` says which ('t', 'k' or both). A call sums its changes to
-- each count in a tally and writes each count once, at its end (flow_write):
-- the end of a try and the next start of its type in the same call (finish
-- and fetch) write nothing at all.

-- A tally: each running count's change by its key (+1 a start, -1 an end);
-- `unmark`, the marks whose type or key had a job end (they go, and the
-- queue's workers are woken); `marked`, the marks this call made (they stay);
-- `flagged`, whether the marks' flag exists (nil: not read, so the marks are
-- read). The two sets are made when first needed.
local function new_tally() return {} end

local function tally_count(tally, ckey, delta) tally[ckey] = (tally[ckey] or 0) + delta end

-- The tally's writes: each count changed (gone at 0), and the marks of types
-- or keys that had a job end, unless this call marked them again. With no
-- marks (the flag is absent, as it is while nothing is held), none are read.
local function flow_write(queue, tally)
  for ckey, delta in pairs(tally) do
    if type(delta) == 'number' and delta ~= 0 and redis.call('INCRBY', ckey, delta) <= 0 then
      redis.call('DEL', ckey)
    end
  end
  if not tally.unmark or tally.flagged == false then return end
  local fields, marked = {}, tally.marked or {}
  for subject in pairs(tally.unmark) do
    if not marked[subject] then fields[#fields + 1] = subject end
  end
  if #fields == 0 then return end
  local waiting = qkey(queue, 'waiting')
  if redis.call('HDEL', waiting, unpack(fields)) > 0 then
    redis.call('SPUBLISH', wake_channel(queue), 'freed')
    if redis.call('EXISTS', waiting) == 0 then redis.call('DEL', marked_key(queue)) end
  end
end

-- A limited job leaves in_progress (or, its lock lapsed, stops counting: the
-- claim's check): it no longer counts as running; when the claim found its
-- type or key blocked, that mark goes and the queue's workers are woken (a
-- later claim marks it again if it is still blocked), so marks of keys that
-- come and go do not pile up. (Its starts stay in the rate windows: a rate
-- counts starts.) With `rec.tally` the writes wait for the call's end.
local function release(rec)
  local t, key = flow_parts(rec.flow)
  if not t then return end
  local tally = rec.tally or new_tally()
  local counted = rec.counted or ''
  if string.find(counted, 't', 1, true) then tally_count(tally, count_key(rec.queue, t), -1) end
  if key ~= '' and string.find(counted, 'k', 1, true) then
    tally_count(tally, count_key_of(rec.queue, t, key), -1)
  end
  local unmark = tally.unmark or {}
  tally.unmark = unmark
  unmark[t] = true
  if key ~= '' then unmark[t .. '\n' .. key] = true end
  if not rec.tally then flow_write(rec.queue, tally) end
end
