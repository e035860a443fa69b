#!lua flags=allow-oom
--- @include "lib/gcra"
-- One request for one key's rate, allowed or not (see lib/gcra.lua).
-- allow-oom: the limit applies while Redis is full too; its one small key
-- per api key is rewritten in place.
-- KEYS: 1 the key's limiter.  ARGV: 1 emission interval (us), 2 burst
-- (requests), 3 requests this one counts as
-- Returns {allowed (1/0), retry after (us), remaining (requests)}.
return gcra(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
