-- dispatch: mark a batch of messages `dispatched` before their handlers start.
--
-- KEYS[1..] one entry key (hash) per message
-- ARGV[1]   now (unix seconds, float as a string)
--
-- Returns one value per message: 1 when it moved `enqueued -> dispatched` (the handler may
-- start), else its current state (or 'missing'): the handler must not start.
local results = {}
for i = 1, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  if state == 'enqueued' then
    redis.call('HSET', KEYS[i], 'state', 'dispatched', 'dispatched_at', ARGV[1])
    redis.call('HINCRBY', KEYS[i], 'attempts', 1)
    results[i] = 1
  else
    results[i] = state or 'missing'
  end
end
return results
