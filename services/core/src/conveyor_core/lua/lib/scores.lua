-- Score maths (scores.py): a score is a priority band plus a due time.

-- A score as Redis should read it: an integer, never in exponent notation.
-- Also how a script passes a number to redis.call: Redis would print it as a
-- double (%.17g), as Lua does for `..` (%.14g), and printing a double costs
-- several times what printing an integer does.
local function fmt(n) return string.format('%d', n) end

-- Priorities are bands of scores in arq's queue (see scores.py, queue_score):
-- the lowest score of a priority's band, and the priority of a score.
local function band_base(priority) return (priority - K.default_priority) * K.band_ms end
local function priority_of(score)
  local p = math.floor(tonumber(score) / K.band_ms) + K.default_priority
  return math.min(math.max(p, K.highest_priority), K.lowest_priority)
end
