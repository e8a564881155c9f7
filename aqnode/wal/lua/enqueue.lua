-- enqueue: write a batch of new messages as `enqueued` (or, for a message whose entity is
-- idle, straight as `dispatched`: one round trip instead of two before its handler runs).
--
-- KEYS[1]   the node's fence (string): set when its group declared it dead and adopted
--           its log; then nothing is written and every message answers 'fenced'
-- KEYS[2]   the node's sequence counter (string)
-- KEYS[3]   the node's live index (zset: message id -> sequence)
-- KEYS[4..] one entry key (hash) per message, in enqueue order
-- ARGV[1]   entry TTL in seconds (the safety TTL)
-- ARGV[2]   now (unix seconds), the dispatch time of pre-dispatched messages
-- ARGV[3..] per message, 4 values: id (only for the live index: the key holds it);
--           body, entity_type, message, entity_id and enqueued_at as one msgpack array
--           (aqnode/wal/entry_body.py), written as is and never read here; payload;
--           flags: '1' write it as `dispatched` (attempt 1); '2' a moved message
--           coming back (adoption, cluster mode): it may replace a `moved` entry, the
--           tombstone of its earlier stay here; '3' both
--
-- Returns one value per message: its new sequence number (an integer), or, when the id is
-- already known (an idempotency key sent again), its current state (a string).
--
-- The live index is written with one ZADD per CHUNK messages, after the loop: a
-- redis.call costs about as much as the command it runs, and the script is atomic, so
-- where in it the index is written does not show.
local CHUNK = 1000  -- members per ZADD: 2,000 arguments, far under unpack's stack limit
local ttl = tonumber(ARGV[1])
local n = #KEYS - 3
local results = {}
local live = {}  -- ZADD's arguments: sequence, id, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 1, n do results[i] = 'fenced' end
  return results
end
local seq = redis.call('INCRBY', KEYS[2], n) - n  -- ids already known leave gaps: harmless
for i = 1, n do
  local key = KEYS[i + 3]
  local state = redis.call('HGET', key, 'state')
  local a = 3 + (i - 1) * 4
  local flags = ARGV[a + 3]
  if state and not (state == 'moved' and (flags == '2' or flags == '3')) then
    results[i] = state
  else
    seq = seq + 1
    if flags == '1' or flags == '3' then
      redis.call('HSET', key, 'state', 'dispatched', 'body', ARGV[a + 1],
        'payload', ARGV[a + 2], 'seq', seq, 'attempts', 1, 'dispatched_at', ARGV[2])
    else
      redis.call('HSET', key, 'state', 'enqueued', 'body', ARGV[a + 1],
        'payload', ARGV[a + 2], 'seq', seq, 'attempts', 0)
    end
    redis.call('EXPIRE', key, ttl)
    live[#live + 1] = seq
    live[#live + 1] = ARGV[a]
    results[i] = seq
  end
end
for first = 1, #live, 2 * CHUNK do
  redis.call('ZADD', KEYS[3], unpack(live, first, math.min(#live, first + 2 * CHUNK - 1)))
end
return results
