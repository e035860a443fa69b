-- arq's result key, written as a job reaches a final state (complete, dead,
-- cancelled), so arq's own client answers for Conveyor's jobs as it does for
-- arq's: `status()` complete, `result()` the value or the error, `abort()`
-- true. The job key's JSON (t, f, a, k, et, as serializer.py writes it) gets
-- the outcome spliced on (s, r, st, ft, q) as text, never decoded and
-- re-encoded (cjson would round numbers), and becomes the result key: the
-- payload and the result are each stored once, in it, for as long as the
-- record lives; the hash keeps neither (a dead job's error stays in the hash). Reads take a finished job's payload
-- and result from it (read.lua, store/reads.py).
--
-- `r` is the result JSON (complete), the error's type and message (dead: the
-- record keeps the whole error, traceback included, as a job's last error) or a
-- CancelledError (cancelled), which conveyor_core.serializer's deserializer
-- turns back into exceptions.

local JOB_JSON_START = '{"t":'

-- The name's value in a flat field list, and the list without that field.
local function take_field(fields, name)
  local kept, value = {}, nil
  for i = 1, #fields, 2 do
    if fields[i] == name then value = fields[i + 1]
    else kept[#kept + 1] = fields[i]; kept[#kept + 1] = fields[i + 1] end
  end
  return value, kept
end

-- Ends arq's keys of a job moving to final state `to` (its lock goes; its job key becomes its result key, expiring with the record
-- after ttl_ms) and returns the hash fields left for the record. Job data
-- that is not Conveyor's JSON (a pickle: it was never run) stays in its job
-- key until the record expires, as it is, with the error in the record.
local function arq_finish(rec, to, now, ttl_ms, fields)
  local id = rec.id
  local job = rec.job_data or redis.call('GET', K.arq_job .. id)
  if not job or string.sub(job, 1, #JOB_JSON_START) ~= JOB_JSON_START then
    redis.call('DEL', K.arq_lock .. id)
    if job then redis.call('PEXPIRE', K.arq_job .. id, ttl_ms) end
    return fields
  end
  local r
  if to == 'complete' then
    r, fields = take_field(fields, 'result')
    r = (r and r ~= '') and r or 'null'
  elseif to == 'dead' then
    -- The error stays in the record too (a job's last error, which listings
    -- filter on); arq's client gets its type and message, not the traceback.
    local error_json = take_field(fields, 'error')
    local ok, e = pcall(cjson.decode, error_json or '')
    if ok and type(e) == 'table' and type(e.type) == 'string' then
      r = cjson.encode({type = e.type, message = type(e.message) == 'string' and e.message or ''})
    else
      r = '{"type":"Error","message":""}'
    end
  else
    r = '{"type":"CancelledError","message":""}'
  end
  -- arq's `t` is the try that ended (the job key's is the enqueuer's, mostly
  -- null); at least 1, as arq's worker counts the try in which it finds a job
  -- aborted before it started.
  local body = string.gsub(string.sub(job, 2, -2), '^"t":[^,]*,',
    '"t":' .. string.format('%d', math.max(rec.tries, 1)) .. ',', 1)
  local result = '{' .. body
    .. ',"s":' .. (to == 'complete' and 'true' or 'false')
    .. ',"r":' .. r
    .. ',"st":' .. string.format('%d', tonumber(rec.started) or now)
    .. ',"ft":' .. string.format('%d', now)
    .. ',"q":' .. cjson.encode(rec.queue) .. '}'
  redis.call('SET', K.arq_result .. id, result, 'PX', string.format('%d', ttl_ms))
  redis.call('DEL', K.arq_lock .. id, K.arq_job .. id)
  return fields
end
