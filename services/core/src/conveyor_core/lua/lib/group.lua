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

-- The group id and the member's index, or nil for a job of no group.
local function group_of(id) return string.match(id, '^(g%x+)%.(%d+)$') end

local function group_key(gid) return K.group .. gid end

-- A continuation joins its queue as submit.lua adds a job that is due now;
-- SET NX: it starts once, whatever happens after.
local function start_continuation(g, n, now)
  local p = 'c' .. n .. ':'
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
  redis.call('PUBLISH', K.wake .. queue, id)
end

-- Every member was counted: the continuations whose gate holds start (none
-- when the group was cancelled, or failed under policy 'fail'), and the
-- group's hash now lives as long as a finished group's.
local function group_finish(gkey, gid, now)
  local flat = redis.call('HGETALL', gkey)
  local g = {}
  for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
  local failures = (tonumber(g.dead) or 0) + (tonumber(g.cancelled) or 0)
  if g.state == 'running' then
    for n = 1, tonumber(g.continuations) or 0 do
      local when = g['c' .. n .. ':when']
      if when == 'always' or failures == 0 then start_continuation(g, n, now) end
    end
    redis.call('HSET', gkey, 'state', 'done', 'finished_at_ms', now)
  else
    redis.call('HSET', gkey, 'finished_at_ms', now)
  end
  redis.call('PEXPIRE', gkey, K.group_keep_ms)
  redis.call('PUBLISH', K.events .. gid, 'finished')
end

-- A job reached final state `to` (lib/transition.lua): counted in its group,
-- if it is a member. Costs one HINCRBY and one PUBLISH for a complete member;
-- the last member also starts the continuations (group_finish).
local function group_end(rec, to, now, fields)
  local gid = group_of(rec.id)
  if not gid then return end
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
      redis.call('HSET', gkey, 'state', 'failed', 'failed_member', rec.id, 'failed_state', to,
        'failed_error', string.sub(why, 1, 2000))
    end
  end
  redis.call('PUBLISH', K.events .. gid, remaining)
  if remaining == 0 then group_finish(gkey, gid, now) end
end

-- A dead member is requeued (lib/requeue.lua): while its group has not
-- finished, it is counted again when it ends; a group that failed for its
-- dead members (policy 'fail') runs again once none is left. A finished
-- group ('done' or 'cancelled') stays as it is: the member runs on its own.
local function group_requeue(rec)
  local gid = group_of(rec.id)
  if not gid then return end
  local gkey = group_key(gid)
  local g = redis.call('HMGET', gkey, 'state', 'dead', 'cancelled')
  if g[1] ~= 'running' and g[1] ~= 'failed' then return end
  redis.call('HINCRBY', gkey, 'remaining', 1)
  local dead = redis.call('HINCRBY', gkey, 'dead', -1)
  if g[1] == 'failed' and dead + (tonumber(g[3]) or 0) == 0 then
    redis.call('HSET', gkey, 'state', 'running')
    redis.call('HDEL', gkey, 'failed_member', 'failed_state', 'failed_error', 'finished_at_ms')
    redis.call('PEXPIRE', gkey, K.group_open_ms)
  end
  redis.call('PUBLISH', K.events .. gid, 'requeued')
end
