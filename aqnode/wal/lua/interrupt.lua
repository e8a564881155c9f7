-- interrupt: messages that were `dispatched` when their shard or node died.
--
-- KEYS[1]   the node's live index (zset)
-- KEYS[2]   the node's dead-letter index (zset: message id -> dead_lettered_at)
-- KEYS[3..] one entry key (hash) per message
-- ARGV[1]   now (unix seconds)
-- ARGV[2..] per message, 3 values: id, retry ('1': on_interrupt = "retry" and attempts
--           are left, so it goes back to `enqueued` at the head of its entity's queue),
--           the error to record (msgpack of an INTERRUPTED AqError)
--
-- Returns one value per message: 'interrupted' (dead-lettered), 'enqueued' (to run again),
-- or, when it was not `dispatched`, its current state (or 'missing'), left as it was.
local now = ARGV[1]
local results = {}
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  local a = 2 + (i - 1) * 3
  local state = redis.call('HGET', key, 'state')
  if state == 'dispatched' then
    if ARGV[a + 1] == '1' then
      redis.call('HSET', key, 'state', 'enqueued', 'error', ARGV[a + 2])
      results[i] = 'enqueued'
    else
      redis.call('HSET', key, 'state', 'interrupted', 'finished_at', now, 'error', ARGV[a + 2],
        'reason', 'interrupted', 'dead_lettered_at', now)
      redis.call('ZREM', KEYS[1], ARGV[a])
      redis.call('PERSIST', key)
      redis.call('ZADD', KEYS[2], now, ARGV[a])
      results[i] = 'interrupted'
    end
  else
    results[i] = state or 'missing'
  end
end
return results
