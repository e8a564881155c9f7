-- dlq_take: take entries out of the dead-letter queue (after a replay, or to purge them).
--
-- KEYS[1]   the node's dead-letter index (zset)
-- KEYS[2]   the node's terminal index (zset), where replayed entries wait for cleanup
-- KEYS[3..] one entry key (hash) per message
-- ARGV[1]   now (unix seconds)
-- ARGV[2]   'replay' (keep the entry until cleanup, marked replayed) or 'purge' (delete it)
-- ARGV[3]   entry TTL in seconds (the safety TTL, restored on a replayed entry)
-- ARGV[4..] the message ids, in the same order as KEYS[3..]
--
-- Returns one value per message: 1 if it was in the dead-letter queue and was taken, else 0.
local results = {}
for i = 4, #ARGV do
  local key = KEYS[i - 1]
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    if ARGV[2] == 'purge' then
      redis.call('DEL', key)
    else
      redis.call('HSET', key, 'replayed_at', ARGV[1])
      redis.call('EXPIRE', key, tonumber(ARGV[3]))
      redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    end
    results[i - 3] = 1
  else
    results[i - 3] = 0
  end
end
return results
