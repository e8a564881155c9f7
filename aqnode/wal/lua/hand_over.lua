-- hand_over: `enqueued` messages of a dead node that now sit in their new owners' logs
-- (adoption, cluster mode) leave this log: they become `moved`, a terminal state.
--
-- KEYS[1]   the node's live index (zset)
-- KEYS[2]   the node's terminal index (zset: message id -> finished_at), read by cleanup
-- KEYS[3..] one entry key (hash) per message
-- ARGV[1]   now (unix seconds)
-- ARGV[2]   the server id of the node that adopted them
-- ARGV[3..] one message id per entry key
--
-- Returns one value per message: 1 when it moved `enqueued -> moved`, else its current
-- state (or 'missing'), left as it was.
local now = ARGV[1]
local results = {}
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  local state = redis.call('HGET', key, 'state')
  if state == 'enqueued' then
    redis.call('HSET', key, 'state', 'moved', 'finished_at', now, 'moved_by', ARGV[2])
    redis.call('ZREM', KEYS[1], ARGV[i + 2])
    redis.call('ZADD', KEYS[2], now, ARGV[i + 2])
    results[i] = 1
  else
    results[i] = state or 'missing'
  end
end
return results
