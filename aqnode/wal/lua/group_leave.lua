-- group_leave: a member that stops leaves at once (others need not wait for its TTL).
--
-- It stays listed as a dead member (its heartbeat is back-dated by node_ttl_ms) rather
-- than vanishing, so that the master sees the death and adopts whatever its log still
-- holds (its queued messages move to their entities' new owners); group_view forgets it
-- later like any dead member.
--
-- KEYS[1]  the group's members zset
-- KEYS[2]  the group's member info hash
-- ARGV[1]  server id
-- ARGV[2]  this process's token: only the process that holds the id leaves with it
-- ARGV[3]  node_ttl_ms
--
-- Returns 1 when it left, 0 when the id is held by another process (or not at all).
local info = redis.call('HGET', KEYS[2], ARGV[1])
if not info then return 0 end
local ok, held = pcall(cjson.decode, info)
if not ok or held['token'] ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now - tonumber(ARGV[3]), ARGV[1])
return 1
