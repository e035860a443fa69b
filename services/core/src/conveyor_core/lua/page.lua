#!lua flags=no-writes
-- One page of an index, strictly after a (score, id) cursor, in either order.
-- Ties on a score are ordered by id, as Redis orders them.
--
-- KEYS: 1 index
-- ARGV: 1 'asc' or 'desc', 2 min score, 3 max score, 4 cursor score or '',
--       5 cursor id, 6 count
-- Returns id, score, id, score, ...
local dir, lo, hi, cursor_score, cursor_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local count = tonumber(ARGV[6])
local ties = 0
if cursor_score ~= '' then
  if dir == 'asc' then lo = cursor_score else hi = cursor_score end
  ties = redis.call('ZCOUNT', KEYS[1], cursor_score, cursor_score)
end
local rows
if dir == 'asc' then
  rows = redis.call('ZRANGEBYSCORE', KEYS[1], lo, hi, 'WITHSCORES', 'LIMIT', 0, count + ties)
else
  rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], hi, lo, 'WITHSCORES', 'LIMIT', 0, count + ties)
end
local out = {}
for i = 1, #rows, 2 do
  local id, score = rows[i], rows[i + 1]
  local after = true
  if cursor_score ~= '' and tonumber(score) == tonumber(cursor_score) then
    if dir == 'asc' then after = id > cursor_id else after = id < cursor_id end
  end
  if after and #out < 2 * count then
    out[#out + 1] = id
    out[#out + 1] = score
  end
end
return out
