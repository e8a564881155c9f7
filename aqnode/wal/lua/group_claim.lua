-- group_claim: record a new master, taking a new epoch, unless it is recorded already.
--
-- KEYS[1]  the group's epoch hash {epoch, master}
-- ARGV[1]  the master the caller computed (the live member with the lowest server id)
-- ARGV[2]  the epoch of the view it computed that from
--
-- Returns {epoch, master}: a new epoch when the master changed, else the current one.
-- Every member may call it with what it computed; the first call for a change bumps the
-- epoch once (the epoch is the group's fencing token), later ones find it recorded. A
-- caller whose view is older than the recorded epoch changes nothing (compare-and-set).
local master = redis.call('HGET', KEYS[1], 'master')
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if epoch ~= tonumber(ARGV[2]) then
  return {epoch, master or ''}
end
if master ~= ARGV[1] then
  local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HSET', KEYS[1], 'master', ARGV[1])
  return {epoch, ARGV[1]}
end
return {tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0'), master}
