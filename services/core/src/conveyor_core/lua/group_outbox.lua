#!lua
--- @include "lib/keys"
-- A queue shard's outbox of continuations (keys.py, OUTBOX_SUFFIX; a cluster
-- only): the last member's end of a group of the shard put there each
-- continuation that joins another slot (lib/group.lua, start_continuation).
-- A worker of the shard takes a few ('take'), starts each in its own slot
-- (group_continue.lua, which starts it once however often it is asked), and
-- asks which of them a group cancel reached meanwhile ('cancelled': their
-- group's hash has cancelled_at_ms, group_cancel.lua), cancels those, and
-- removes them all ('done'). A taken entry is leased, not removed: if its
-- taker dies, it is due again once the lease ends, and another worker
-- starts it (or finds it started) and asks again.
--
-- KEYS: 1 the shard's outbox
-- ARGV: 1 'take', 'cancelled' or 'done', 2 now ms, then
--       take: 3 lease ms, 4 at most this many entries
--       cancelled, done: 3.. entries
-- Returns take: per entry, 7 values: the entry, then the continuation's
-- id, queue, priority, flow entry, job type and arq job bytes (from its
-- group's hash, in this slot); cancelled: the ids of the continuations
-- whose group was cancelled; done: {}.
local mode, now = ARGV[1], tonumber(ARGV[2])
if mode == 'done' then
  for i = 3, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
  return {}
end
if mode == 'cancelled' then
  local ids = {}
  for i = 3, #ARGV do
    local gid, n = string.match(ARGV[i], '^(.*)\n(%d+)$')
    local c = gid and redis.call('HMGET', K.group .. gid, 'cancelled_at_ms', 'c' .. n .. ':id')
    if c and c[1] and c[2] then ids[#ids + 1] = c[2] end
  end
  return ids
end
local reply = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, entry in ipairs(due) do
  local gid, n = string.match(entry, '^(.*)\n(%d+)$')
  local p = 'c' .. (n or '0') .. ':'
  local c = gid and redis.call('HMGET', K.group .. gid, p .. 'id', p .. 'queue', p .. 'priority',
    p .. 'flow', p .. 'type', p .. 'bytes')
  if not c or not c[1] then
    -- Its group is gone (expired, or deleted): nothing is left to start.
    redis.call('ZREM', KEYS[1], entry)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), entry)
    reply[#reply + 1] = entry
    for i = 1, 6 do reply[#reply + 1] = c[i] or '' end
  end
end
return reply
