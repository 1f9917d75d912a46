-- get_auction.lua: GET_AUCTION (and the read behind SUBSCRIBE).
-- KEYS[1] = gavel:{a:ID}
-- ARGV    = now_ms, channel (gavel:{a:ID}:updates, a shard channel), auction_id
-- Returns the hash's fields {reserve, inc, ends, high, bidder, count, closed}
-- exactly as HMGET would (all nil when the auction does not exist). A read
-- is a touch: like the in-memory engine, an auction past its end is closed
-- here, and the closing published, so every node's subscribers learn of it.
local k = KEYS[1]
local now, channel, auction = ARGV[1], ARGV[2], ARGV[3]
local a = redis.call('HMGET', k, 'reserve', 'inc', 'ends', 'high', 'bidder', 'count', 'closed')
if not a[1] then
  return a
end
if a[7] == '0' and a[3] ~= ZERO and now >= a[3] then
  a[7] = '1'
  redis.call('HSET', k, 'closed', '1')
  redis.call('SPUBLISH', channel, 'C|' .. auction .. '|' .. a[4] .. '|' .. a[5])
end
return a
