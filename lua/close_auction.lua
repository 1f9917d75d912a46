-- close_auction.lua: CLOSE_AUCTION.
-- KEYS[1] = gavel:{a:ID}
-- ARGV    = now_ms, channel (gavel:{a:ID}:updates, a shard channel), auction_id
-- Returns {status, winning_bid, winner, 0}: OK (closed now), CLOSED (already
-- closed, by time or earlier), NOT_FOUND.
local k = KEYS[1]
local now, channel, auction = ARGV[1], ARGV[2], ARGV[3]
local a = redis.call('HMGET', k, 'ends', 'high', 'bidder', 'closed')
if not a[1] then
  return {4, ZERO, ZERO, 0}
end
local ends, high, bidder, closed = a[1], a[2], a[3], a[4]
if closed == '1' then
  return {3, high, bidder, 0}
end
redis.call('HSET', k, 'closed', '1')
redis.call('SPUBLISH', channel, 'C|' .. auction .. '|' .. high .. '|' .. bidder)
if ends ~= ZERO and now >= ends then
  -- Its time had passed: it was already over, as the in-memory engine says.
  return {3, high, bidder, 0}
end
return {0, high, bidder, 0}
