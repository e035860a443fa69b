-- Key names built in Lua, as keys.py builds them (K holds its prefixes): a
-- queue's keys share its hash slot, `{queue}`.

local function index(queue, state) return K.prefix .. '{' .. queue .. '}:' .. state end

local function qkey(queue, name) return K.prefix .. '{' .. queue .. '}:' .. name end

-- A queue's wake-up channel (keys.py, wake_channel): sharded (SPUBLISH), in
-- the queue's slot, so a cluster sends it to the queue's nodes only.
local function wake_channel(queue) return qkey(queue, 'wake') end

-- A group's events channel (keys.py, group_events_channel): sharded, in the
-- slot of the group's hash: its id's tag, or (an untagged id) the hash's name.
local function group_channel(gid)
  if string.byte(gid, 1) == 123 then return K.events .. 'group:' .. gid end  -- '{'
  return K.events .. '{' .. K.group .. gid .. '}'
end

-- Flow control (flow.py, keys.py): a limited job's entry is "type\nkey".
local function flow_parts(flow)
  local at = string.find(flow, '\n', 1, true)
  if not at then return nil, nil end
  return string.sub(flow, 1, at - 1), string.sub(flow, at + 1)
end
-- Whether the entry has a key (it does not end its type's line). Only a keyed
-- job's entry is in the flow hash: a claim reads an unkeyed one's type from
-- its job data.
local function flow_keyed(flow) return string.byte(flow, -1) ~= 10 end
-- Running counts: a string per type and per key, the number of its jobs in
-- progress (gone at 0); the marks' flag, a string that exists while the
-- waiting hash may hold marks; and when the claim last looked for running jobs
-- whose lock lapsed (it looks at most once per lock ttl).
local function count_key(queue, t) return qkey(queue, 'running-count:' .. t) end
local function count_key_of(queue, t, key)
  return qkey(queue, 'running-count-key:' .. t .. ':' .. key)
end
local function marked_key(queue) return qkey(queue, 'waiting-marked') end
local function healed_key(queue) return qkey(queue, 'running-checked') end
-- A rate's window: a list of its start times (ms), oldest first.
local function starts_key(queue, t) return qkey(queue, 'start-log:' .. t) end
local function starts_key_of(queue, t, key) return qkey(queue, 'start-log-key:' .. t .. ':' .. key) end
-- A hold (a partner's 429, see finish.lua): while it lives (PX), no job of the
-- type (or of the key) starts.
local function hold_key(queue, t) return qkey(queue, 'hold:' .. t) end
local function hold_key_of(queue, t, key) return qkey(queue, 'hold-key:' .. t .. ':' .. key) end

-- Keys take turns (flow.py): a keyed job (its type has a key) also waits in
-- its key's own queue, `keyq:{type}:{key}` (same score as in arq's queue),
-- and a key with waiting jobs is in its type's ring of keys, `ring:{type}`,
-- which the claim rotates.
local function keyq_key(queue, t, key) return qkey(queue, 'keyq:' .. t .. ':' .. key) end
local function ring_key(queue, t) return qkey(queue, 'ring:' .. t) end

-- A key the call has none of is given as keys.absent (keys.py): a key in the
-- call's slot whose name ends in a NUL byte, never read or written.
local function has(k) return k ~= '' and string.byte(k, -1) ~= 0 end
