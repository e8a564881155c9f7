-- registry_publish: a node's registry entry, refreshed (SPEC 11). Entries of nodes not
-- refreshed for ttl_ms are removed here, and every key expires ttl_ms after the last
-- publish, so a group gone that long leaves nothing behind.
--
-- KEYS[1]  the registry's seen zset (server id -> last publish, Redis time in ms)
-- KEYS[2]  the registry's nodes hash (server id -> node record, msgpack)
-- KEYS[3]  the node's catalogue key (content-addressed: <...>:cat:<digest>)
-- ARGV[1]  server id
-- ARGV[2]  the node record
-- ARGV[3]  the catalogue, or "" to refresh the stored one
-- ARGV[4]  ttl_ms
--
-- Returns 1, or 0 (nothing written) when ARGV[3] is "" and the catalogue is not stored.
local ttl = tonumber(ARGV[4])
if ARGV[3] == '' then
  if redis.call('PEXPIRE', KEYS[3], ttl) == 0 then
    return 0
  end
else
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ttl)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
