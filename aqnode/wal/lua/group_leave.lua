-- group_leave: a member that stops leaves at once (others need not wait for its TTL).
--
-- KEYS[1]  the group's members zset
-- KEYS[2]  the group's member info hash
-- ARGV[1]  server id
-- ARGV[2]  this process's token: only the process that holds the id removes it
--
-- Returns 1 when removed, 0 when the id is held by another process (or not at all).
local info = redis.call('HGET', KEYS[2], ARGV[1])
if not info then return 0 end
local ok, held = pcall(cjson.decode, info)
if not ok or held['token'] ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
