-- dispatch: mark a batch of messages `dispatched` before their handlers start.
--
-- KEYS[1]   the node's fence (string): set when its group declared it dead and adopted
--           its log; then nothing is marked and every message answers 'fenced'
-- KEYS[2..] one entry key (hash) per message
-- ARGV[1]   now (unix seconds, float as a string)
--
-- Returns one value per message: 1 when it moved `enqueued -> dispatched` (the handler may
-- start), else its current state (or 'missing', or 'fenced'): the handler must not start.
local results = {}
local fenced = redis.call('EXISTS', KEYS[1]) == 1
for i = 2, #KEYS do
  local fields = redis.call('HMGET', KEYS[i], 'state', 'attempts')
  local state = fields[1]
  if fenced then
    results[i - 1] = 'fenced'
  elseif state == 'enqueued' then
    -- one write for both (HSET + HINCRBY was two commands, and two in the AOF)
    redis.call('HSET', KEYS[i], 'state', 'dispatched', 'dispatched_at', ARGV[1],
      'attempts', (tonumber(fields[2]) or 0) + 1)
    results[i - 1] = 1
  else
    results[i - 1] = state or 'missing'
  end
end
return results
