-- group_claim: record a new master, taking a new epoch, unless it is recorded already.
--
-- KEYS[1]  the group's epoch hash {epoch, master}
-- ARGV[1]  the master the caller computed (the live member with the lowest server id)
--
-- Returns {epoch, master}: a new epoch when the master changed, else the current one.
-- Every member may call it with what it computed; the first call for a change bumps the
-- epoch once (the epoch is the group's fencing token), later ones find it recorded.
local master = redis.call('HGET', KEYS[1], 'master')
if master ~= ARGV[1] then
  local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HSET', KEYS[1], 'master', ARGV[1])
  return {epoch, ARGV[1]}
end
return {tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0'), master}
