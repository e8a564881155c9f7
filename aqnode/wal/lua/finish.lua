-- finish: record the outcome of a batch of handlers that ran.
--
-- KEYS[1]   the node's live index (zset)
-- KEYS[2]   the node's terminal index (zset: message id -> finished_at), read by cleanup
-- KEYS[3..] one entry key (hash) per message
-- ARGV[1]   now (unix seconds)
-- ARGV[2..] per message, 4 values: id, new state ('completed' or 'failed'), reply, error
--
-- Returns one value per message: 1 when it moved `dispatched -> completed|failed`, else
-- its current state (or 'missing'), which is left as it was.
local now = ARGV[1]
local results = {}
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  local a = 2 + (i - 1) * 4
  local state = redis.call('HGET', key, 'state')
  if state == 'dispatched' then
    redis.call('HSET', key, 'state', ARGV[a + 1], 'finished_at', now,
      'reply', ARGV[a + 2], 'error', ARGV[a + 3])
    redis.call('ZREM', KEYS[1], ARGV[a])
    redis.call('ZADD', KEYS[2], now, ARGV[a])
    results[i] = 1
  else
    results[i] = state or 'missing'
  end
end
return results
