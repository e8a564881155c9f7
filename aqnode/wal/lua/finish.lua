-- finish: record the outcome of a batch of handlers that ran.
--
-- KEYS[1]   the node's live index (zset)
-- KEYS[2]   the node's terminal index (zset: message id -> finished_at), read by cleanup
-- KEYS[3]   the node's dead-letter index (zset: message id -> dead_lettered_at)
-- KEYS[4..] one entry key (hash) per message
-- ARGV[1]   now (unix seconds)
-- ARGV[2..] per message, 5 values: id, new state ('completed' or 'failed'), reply, error,
--           dead ('1': no attempts left, dead-letter it with reason 'exhausted')
--
-- Returns one value per message: 1 when it moved `dispatched -> completed|failed`, else
-- its current state (or 'missing'), which is left as it was.
local now = ARGV[1]
local results = {}
for i = 1, #KEYS - 3 do
  local key = KEYS[i + 3]
  local a = 2 + (i - 1) * 5
  local state = redis.call('HGET', key, 'state')
  if state == 'dispatched' then
    redis.call('HSET', key, 'state', ARGV[a + 1], 'finished_at', now,
      'reply', ARGV[a + 2], 'error', ARGV[a + 3])
    redis.call('ZREM', KEYS[1], ARGV[a])
    if ARGV[a + 4] == '1' then
      redis.call('HSET', key, 'reason', 'exhausted', 'dead_lettered_at', now)
      redis.call('PERSIST', key)
      redis.call('ZADD', KEYS[3], now, ARGV[a])
    else
      redis.call('ZADD', KEYS[2], now, ARGV[a])
    end
    results[i] = 1
  else
    results[i] = state or 'missing'
  end
end
return results
