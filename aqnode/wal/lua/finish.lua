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
--
-- The indexes are written with one variadic ZREM / ZADD per CHUNK messages, after the
-- loop (the script is atomic: where in it they are written does not show).
local CHUNK = 1000  -- members per call, far under unpack's stack limit
local now = ARGV[1]
local results = {}
local gone = {}  -- ids that leave the live index
local done = {}  -- ZADD arguments for the terminal index: now, id, ...
local dead = {}  -- the same for the dead-letter index
for i = 1, #KEYS - 3 do
  local key = KEYS[i + 3]
  local a = 2 + (i - 1) * 5
  local state = redis.call('HGET', key, 'state')
  if state == 'dispatched' then
    local index = done
    if ARGV[a + 4] == '1' then
      redis.call('HSET', key, 'state', ARGV[a + 1], 'finished_at', now, 'reply', ARGV[a + 2],
        'error', ARGV[a + 3], 'reason', 'exhausted', 'dead_lettered_at', now)
      redis.call('PERSIST', key)
      index = dead
    else
      redis.call('HSET', key, 'state', ARGV[a + 1], 'finished_at', now,
        'reply', ARGV[a + 2], 'error', ARGV[a + 3])
    end
    gone[#gone + 1] = ARGV[a]
    index[#index + 1] = now
    index[#index + 1] = ARGV[a]
    results[i] = 1
  else
    results[i] = state or 'missing'
  end
end
for first = 1, #gone, CHUNK do
  redis.call('ZREM', KEYS[1], unpack(gone, first, math.min(#gone, first + CHUNK - 1)))
end
for first = 1, #done, 2 * CHUNK do
  redis.call('ZADD', KEYS[2], unpack(done, first, math.min(#done, first + 2 * CHUNK - 1)))
end
for first = 1, #dead, 2 * CHUNK do
  redis.call('ZADD', KEYS[3], unpack(dead, first, math.min(#dead, first + 2 * CHUNK - 1)))
end
return results
