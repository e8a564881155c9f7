-- enqueue: write a batch of new messages as `enqueued`.
--
-- KEYS[1]   the node's sequence counter (string)
-- KEYS[2]   the node's live index (zset: message id -> sequence)
-- KEYS[3..] one entry key (hash) per message, in enqueue order
-- ARGV[1]   entry TTL in seconds (the safety TTL)
-- ARGV[2..] per message, 6 values: id, entity_type, message, entity_id, payload, enqueued_at
--
-- Returns one value per message: its new sequence number (an integer), or, when the id is
-- already known (an idempotency key sent again), its current state (a string).
local ttl = tonumber(ARGV[1])
local n = #KEYS - 2
local results = {}
local fresh = 0
for i = 1, n do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then fresh = fresh + 1 end
end
local seq = redis.call('INCRBY', KEYS[1], fresh) - fresh
for i = 1, n do
  local key = KEYS[i + 2]
  local state = redis.call('HGET', key, 'state')
  if state then
    results[i] = state
  else
    local a = 2 + (i - 1) * 6
    seq = seq + 1
    redis.call('HSET', key, 'state', 'enqueued', 'id', ARGV[a], 'entity_type', ARGV[a + 1],
      'message', ARGV[a + 2], 'entity_id', ARGV[a + 3], 'payload', ARGV[a + 4],
      'enqueued_at', ARGV[a + 5], 'seq', seq, 'attempts', 0)
    redis.call('EXPIRE', key, ttl)
    redis.call('ZADD', KEYS[2], seq, ARGV[a])
    results[i] = seq
  end
end
return results
