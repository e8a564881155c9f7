-- cleanup: evict terminal entries whose idempotency window has passed.
--
-- KEYS[1]   the node's terminal index (zset: message id -> finished_at)
-- KEYS[2..] one entry key (hash) per message, as listed from KEYS[1] by the caller
-- ARGV[1..] the message ids, in the same order
--
-- Only entries still in a terminal state are deleted (an entry is never evicted under a
-- running message). Returns the number of entries deleted.
local CHUNK = 1000  -- ids per ZREM, far under unpack's stack limit
local deleted = 0
for i = 1, #ARGV do
  local key = KEYS[i + 1]
  local state = redis.call('HGET', key, 'state')
  if state == 'completed' or state == 'failed' or state == 'interrupted' or state == false then
    redis.call('DEL', key)
    deleted = deleted + 1
  end
end
for first = 1, #ARGV, CHUNK do
  redis.call('ZREM', KEYS[1], unpack(ARGV, first, math.min(#ARGV, first + CHUNK - 1)))
end
return deleted
