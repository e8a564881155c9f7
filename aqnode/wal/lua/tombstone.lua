-- tombstone: a dead node's message that was interrupted by its death (adoption, cluster
-- mode) becomes known in its entity's new owner's log, as `interrupted`, so that a client
-- that resends it under the same message id is answered INTERRUPTED instead of running
-- it a second time. It is terminal (in the done index, cleaned like any finished entry);
-- its dead letter stays in the dead node's queue. An id this log knows already is left
-- as it is.
--
-- KEYS[1]   the new owner's terminal index (zset: message id -> finished_at)
-- KEYS[2..] one entry key (hash) per message
-- ARGV[1]   entry TTL in seconds (the safety TTL)
-- ARGV[2]   now (unix seconds)
-- ARGV[3..] per message, 6 values: id, entity_type, message, entity_id, error (msgpack),
--           the node it was interrupted on
--
-- Returns one value per message: 1 when written, else its current state, left as it was.
local ttl = tonumber(ARGV[1])
local now = ARGV[2]
local results = {}
for i = 1, #KEYS - 1 do
  local key = KEYS[i + 1]
  local a = 3 + (i - 1) * 6
  local state = redis.call('HGET', key, 'state')
  if state then
    results[i] = state
  else
    redis.call('HSET', key, 'state', 'interrupted', 'id', ARGV[a], 'entity_type', ARGV[a + 1],
      'message', ARGV[a + 2], 'entity_id', ARGV[a + 3], 'error', ARGV[a + 4],
      'finished_at', now, 'interrupted_on', ARGV[a + 5], 'attempts', 1)
    redis.call('EXPIRE', key, ttl)
    redis.call('ZADD', KEYS[1], now, ARGV[a])
    results[i] = 1
  end
end
return results
