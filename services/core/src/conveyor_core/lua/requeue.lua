#!lua
--- @include "lib/record"
--- @include "lib/requeue"
-- Put a dead job back on its queue under the same id: a new first try, same
-- payload, the requeuing request's trace context. It resumes from its last
-- checkpoint (checkpoint.py) unless asked to start over.
--
-- KEYS: 1 queue, 2 arq job key, 3 arq result key; then, declared (named here
--       too, see store/declared.py): the job's record and lock, its group's
--       keys, the queue's flow and waiting hashes, every index, a limited
--       type's running count, hold and ring and the marks' flag
-- ARGV: 1 job id, 2 now ms, 3 arq job bytes, 4 '1' to start over (drop the checkpoint)
-- Returns {outcome, the record as left, as field, value, ...}: outcome is
-- 'requeued', 'missing' or the state it was in. A worker may start it the next moment.
local id, queue, now = ARGV[1], KEYS[1], tonumber(ARGV[2])
local rec = load(id, queue, true)
if not rec then return {'missing', {}} end
if rec.state ~= 'dead' then return {rec.state, redis.call('HGETALL', K.job .. id)} end
redis.call('SET', KEYS[2], ARGV[3])
if ARGV[4] == '1' then redis.call('HDEL', K.job .. id, 'checkpoint') end
requeue_dead(rec, now)
redis.call('SPUBLISH', wake_channel(queue), id)
return {'requeued', redis.call('HGETALL', K.job .. id)}
