-- retry: a handler failed and its entity type allows another attempt.
--
-- KEYS[1..] one entry key (hash) per message
-- ARGV[1..] per message: the error to record (msgpack of a HANDLER_ERROR AqError)
--
-- Returns one value per message: 1 when it moved `dispatched -> enqueued` (it keeps its
-- place at the head of its entity's queue), else its current state (or 'missing').
local results = {}
for i = 1, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  if state == 'dispatched' then
    redis.call('HSET', KEYS[i], 'state', 'enqueued', 'error', ARGV[i])
    results[i] = 1
  else
    results[i] = state or 'missing'
  end
end
return results
