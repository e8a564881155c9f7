-- undispatch: take back `dispatched` marks whose handler provably never started (the
-- supervisor never handed the go-ahead to a live shard), so the message runs in turn.
--
-- KEYS[1..] one entry key (hash) per message
-- ARGV      none
--
-- Returns one value per message: 1 when it moved `dispatched -> enqueued` (the attempt it
-- never made is not counted), else its current state (or 'missing'), left as it was.
local results = {}
for i = 1, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  if state == 'dispatched' then
    redis.call('HSET', KEYS[i], 'state', 'enqueued')
    redis.call('HINCRBY', KEYS[i], 'attempts', -1)
    results[i] = 1
  else
    results[i] = state or 'missing'
  end
end
return results
