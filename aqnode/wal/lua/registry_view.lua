-- registry_view: the registry's live node entries (SPEC 11); read-only.
--
-- KEYS[1]  the registry's seen zset (server id -> last publish, Redis time in ms)
-- KEYS[2]  the registry's nodes hash (server id -> node record, msgpack)
-- ARGV[1]  ttl_ms: entries not refreshed for this long are left out
--
-- Returns {now_ms, id1, last1, record1, id2, last2, record2, ...}, oldest first.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local result = {now}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local record = redis.call('HGET', KEYS[2], live[i])
  if record then
    result[#result + 1] = live[i]
    result[#result + 1] = live[i + 1]
    result[#result + 1] = record
  end
end
return result
