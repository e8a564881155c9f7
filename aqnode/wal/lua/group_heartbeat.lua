-- group_heartbeat: a member says it is alive (join, renew), in Redis time.
--
-- KEYS[1]  the group's members zset (server id -> last heartbeat, Redis time in ms)
-- KEYS[2]  the group's member info hash (server id -> JSON {token, address, pid, ...})
-- ARGV[1]  server id
-- ARGV[2]  this process's token (random per start)
-- ARGV[3]  the info JSON to store (it carries the same token)
-- KEYS[3]  this member's adoption key (see group_adopt.lua)
-- KEYS[4]  this member's fence key (set when the group declared it dead and adopted it)
-- ARGV[4]  node_ttl_ms: a heartbeat younger than this is a live member
--
-- Returns {1, now_ms} when recorded; {0, age_ms, info} when another live process (another
-- token) holds this server id: nothing is written, the caller must not take its place;
-- {2, ms_left, adopter} while another node adopts this member's log (it was declared
-- dead): nothing is written, the member may not run anything until that is done;
-- {3, 0, adopter} when this very process (its token) was declared dead and its log
-- adopted: it must stop. A new process of the id clears the fence and joins afresh.
local adopter = redis.call('GET', KEYS[3])
if adopter then
  return {2, redis.call('PTTL', KEYS[3]), adopter}
end
local fence = redis.call('GET', KEYS[4])
local info = redis.call('HGET', KEYS[2], ARGV[1])
if fence then
  local ok, held = pcall(cjson.decode, info or '')
  if ok and held['token'] == ARGV[2] then
    return {3, 0, fence}
  end
  redis.call('DEL', KEYS[4])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last and info then
  local age = now - tonumber(last)
  local ok, held = pcall(cjson.decode, info)
  if age < tonumber(ARGV[4]) and ok and held['token'] ~= ARGV[2] then
    return {0, age, info}
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return {1, now}
