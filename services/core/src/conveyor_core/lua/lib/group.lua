--- @include "lib/keys"
--- @include "lib/scores"
--- @include "lib/fairness"
--- @include "lib/history"

-- Groups (groups.py): a member's end counts in its group, and the last one
-- starts the group's continuations, in the script that ends it, so they start
-- exactly once (fencing makes each end happen once). A member's id says its
-- group and its place, `{group id}.{index}`: a job's end learns its group with
-- no read, and a job of no group pays nothing.
--
-- The group's hash (keys.py, GROUP_PREFIX): total, remaining (members not yet
-- counted), dead and cancelled (members counted so, complete = the rest),
-- policy ('fail', 'run' or 'ignore'), state ('running', 'done', 'failed' or
-- 'cancelled'), the member that failed it and why, and its continuations
-- (`c{n}:id`, `:queue`, `:priority`, `:flow`, `:type`, `:bytes`, `:when`: 'always', or
-- 'success' when no member failed), each started as submit.lua would.
--
-- Handing over (groups.py): a member (or a continuation that holds a place)
-- may hand its place in its group to a group it starts: the new group's
-- `hands_to` names the place (a member id of the outer group). The outer
-- group then waits for one more end (`remaining` and `handed` + 1, and
-- `handed:{index}` = the new group's continuation id, whose result takes the
-- place's): the handing job's own end counts, and so does the end of the new
-- group's `then` continuation, or the new group's own failure or cancel when
-- that continuation will not run.

-- The group id and the member's index, or nil for a job of no group. A
-- group's id carries its queue shard's tag on a cluster (`{shard}g...`,
-- group_ids.py), none on one node.
local function group_of(id)
  local gid, at = string.match(id, '^({[^}]*}g%x+)%.(%d+)$')
  if gid then return gid, at end
  return string.match(id, '^(g%x+)%.(%d+)$')
end

-- The group whose `then` continuation this job is, when that continuation
-- is in its group's slot (a continuation of another shard carries its own tag
-- first, `{other}{shard}g....then`, and never holds a place: groups.py), or nil.
local function continued_by(id)
  return string.match(id, '^({[^}]*}g%x+)%.then$') or string.match(id, '^(g%x+)%.then$')
end

local function group_key(gid) return K.group .. gid end

-- A continuation joins its queue as submit.lua adds a job that is due now;
-- SET NX: it starts once, whatever happens after. One in another slot than
-- its group's (a cluster only: `outbox` = '1') is handed to the outbox of the
-- group's shard instead, which a worker of that shard drains
-- (group_outbox.lua): that worker starts it in its own slot.
local function start_continuation(g, n, now, gid)
  local p = 'c' .. n .. ':'
  if g[p .. 'outbox'] == '1' then
    local shard = string.match(gid, '^{([^}]*)}')
    redis.call('ZADD', qkey(shard, 'outbox'), now, gid .. '\n' .. n)
    redis.call('SPUBLISH', wake_channel(shard), K.outbox_message)
    return
  end
  local id, queue, flow = g[p .. 'id'], g[p .. 'queue'], g[p .. 'flow'] or ''
  if not redis.call('SET', K.arq_job .. id, g[p .. 'bytes'], 'NX', 'PX', K.arq_expiry_extra_ms) then
    return
  end
  local score = fmt(band_base(tonumber(g[p .. 'priority'])) + now)
  redis.call('ZADD', queue, score, id)
  if flow ~= '' then
    redis.call('HSET', qkey(queue, 'flow'), id, flow)
    fair_enter(queue, flow, score, id)
  end
  history(queue, now, g[p .. 'type'] .. ':enqueued', 1)
  redis.call('SPUBLISH', wake_channel(queue), id)
end

-- Count `place` (a member id) of group `gid` as ended in state `to`. A
-- forward declaration: finishing a group that holds a place counts that place.
local group_finish

local function count_end(gid, place, to, now, fields)
  local gkey = group_key(gid)
  local remaining = redis.call('HINCRBY', gkey, 'remaining', -1)
  if remaining < 0 then
    -- Not counted: the group is gone (the HINCRBY made a hash of one field),
    -- or every member was counted before (a requeued member of a finished
    -- group runs on its own).
    if redis.call('HLEN', gkey) == 1 then redis.call('DEL', gkey)
    else redis.call('HINCRBY', gkey, 'remaining', 1) end
    return
  end
  if to ~= 'complete' then
    redis.call('HINCRBY', gkey, to, 1)
    local g = redis.call('HMGET', gkey, 'policy', 'state')
    if g[1] == 'fail' and g[2] == 'running' then
      local why = ''
      for i = 1, #fields, 2 do if fields[i] == 'error' then why = fields[i + 1] end end
      redis.call('HSET', gkey, 'state', 'failed', 'failed_member', place, 'failed_state', to,
        'failed_error', string.sub(why, 1, 2000))
    end
  end
  redis.call('SPUBLISH', group_channel(gid), remaining)
  if remaining == 0 then group_finish(gkey, gid, now) end
end

-- Every member was counted: the continuations whose gate holds start (none
-- when the group was cancelled, or failed under policy 'fail'), and the
-- group's hash now lives as long as a finished group's. A group that holds
-- a place and will not run its `then` continuation ends that place, as dead
-- (failed) or cancelled.
group_finish = function(gkey, gid, now)
  local flat = redis.call('HGETALL', gkey)
  local g = {}
  for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
  local failures = (tonumber(g.dead) or 0) + (tonumber(g.cancelled) or 0)
  local continues = false
  if g.state == 'running' then
    for n = 1, tonumber(g.continuations) or 0 do
      local when = g['c' .. n .. ':when']
      if when == 'always' or failures == 0 then
        start_continuation(g, n, now, gid)
        if g['c' .. n .. ':id'] == gid .. '.then' then continues = true end
      end
    end
    redis.call('HSET', gkey, 'state', 'done', 'finished_at_ms', now)
  else
    redis.call('HSET', gkey, 'finished_at_ms', now)
  end
  redis.call('PEXPIRE', gkey, K.group_keep_ms)
  redis.call('SPUBLISH', group_channel(gid), 'finished')
  local outer = g.hands_to and group_of(g.hands_to)
  if outer and not continues then
    local to = g.state == 'cancelled' and 'cancelled' or 'dead'
    local error = cjson.encode({type = 'GroupFailed',
      message = 'group ' .. gid .. ' it handed its end to ' .. (g.state == 'cancelled'
        and 'was cancelled' or 'failed')})
    count_end(outer, g.hands_to, to, now, {'error', error})
  end
end

-- A job reached final state `to` (lib/transition.lua): counted in its group,
-- if it is a member, or in the group a continuation holds a place of. Costs
-- one HINCRBY and one SPUBLISH for a complete member (a continuation, one
-- HGET more); the last member also starts the continuations (group_finish).
local function group_end(rec, to, now, fields)
  local gid = group_of(rec.id)
  if gid then return count_end(gid, rec.id, to, now, fields) end
  local owner = continued_by(rec.id)
  if not owner then return end
  local place = redis.call('HGET', group_key(owner), 'hands_to')
  if place then count_end(group_of(place), place, to, now, fields) end
end

-- Count a dead place of group `gid` again: it was requeued, or the group it
-- was handed to re-opened. While the group has not finished with its
-- continuation started ('done'), its end will count again; a group that
-- failed for its dead places (policy 'fail') runs again once none is left
-- (and, if it holds a place itself and had ended it as failed, re-opens
-- that place too). A 'done' group stays as it is: the member runs on its own.
local function uncount(gid)
  local gkey = group_key(gid)
  local g = redis.call('HMGET', gkey, 'state', 'cancelled', 'hands_to', 'finished_at_ms')
  if g[1] ~= 'running' and g[1] ~= 'failed' and g[1] ~= 'cancelled' then return end
  redis.call('HINCRBY', gkey, 'remaining', 1)
  local dead = redis.call('HINCRBY', gkey, 'dead', -1)
  if g[1] == 'failed' and dead + (tonumber(g[2]) or 0) == 0 then
    redis.call('HSET', gkey, 'state', 'running')
    redis.call('HDEL', gkey, 'failed_member', 'failed_state', 'failed_error', 'finished_at_ms')
    redis.call('PEXPIRE', gkey, K.group_open_ms)
    local outer = g[3] and group_of(g[3])
    if outer and g[4] then uncount(outer) end
  end
  redis.call('SPUBLISH', group_channel(gid), 'requeued')
end

-- A dead job is requeued (lib/requeue.lua): a member, or a `then`
-- continuation that holds a place, counts in its group again.
local function group_requeue(rec)
  local gid = group_of(rec.id)
  if gid then return uncount(gid) end
  local owner = continued_by(rec.id)
  if not owner then return end
  local place = redis.call('HGET', group_key(owner), 'hands_to')
  if place then uncount(group_of(place)) end
end
