-- group_adopt: take, renew or release the right to adopt a dead member's log.
--
-- KEYS[1]  the group's members zset (server id -> last heartbeat, Redis time in ms)
-- KEYS[2]  the adoption key of the dead member (string: the adopter's server id)
-- KEYS[3]  the dead member's fence key: set with the right, kept after it (the process
--          that was declared dead must not carry on; group_heartbeat tells it so)
-- ARGV[1]  the dead member's server id
-- ARGV[2]  the adopter's server id
-- ARGV[3]  node_ttl_ms: a member whose heartbeat is younger is alive and is not adopted
-- ARGV[4]  'take' (also renews) or 'release'
-- ARGV[5]  take: how long the right lasts (ms) unless renewed
--
-- Returns 1 when taken (or released), 0 when the member is alive again, or another live
-- node holds the right (one that died holding it loses it at once, not when it expires).
-- While the key exists the member cannot rejoin (group_heartbeat).
local holder = redis.call('GET', KEYS[2])
if ARGV[4] == 'release' then
  if holder == ARGV[2] then redis.call('DEL', KEYS[2]) end
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function alive(id)
  local last = redis.call('ZSCORE', KEYS[1], id)
  return last and now - tonumber(last) < tonumber(ARGV[3])
end
if holder and holder ~= ARGV[2] and alive(holder) then return 0 end  -- a live adopter
if holder ~= ARGV[2] and alive(ARGV[1]) then return 0 end  -- it is back: not dead
-- free, ours (renewal), or held by an adopter that died itself: take it
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
redis.call('SET', KEYS[3], ARGV[2])
return 1
