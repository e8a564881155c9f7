-- group_view: what every member computes the master from (the same data for all).
--
-- KEYS[1]  the group's members zset (server id -> last heartbeat, Redis time in ms)
-- KEYS[2]  the group's member info hash
-- KEYS[3]  the group's epoch hash {epoch, master}
-- ARGV[1]  forget_ms: members silent longer than this are removed for good
--
-- Returns {now_ms, epoch, master, id1, last1, info1, id2, last2, info2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local result = {now, redis.call('HGET', KEYS[3], 'epoch') or '0',
                redis.call('HGET', KEYS[3], 'master') or ''}
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  result[#result + 1] = members[i]
  result[#result + 1] = members[i + 1]
  result[#result + 1] = redis.call('HGET', KEYS[2], members[i]) or '{}'
end
return result
