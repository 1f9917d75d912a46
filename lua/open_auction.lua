-- open_auction.lua: OPEN_AUCTION.
-- KEYS[1] = gavel:{a:ID}          (hash: the auction)
-- ARGV    = reserve, min_increment, ends_at_ms   (20-digit decimal strings)
-- Returns {status, value, aux, replayed}: OK; OK replayed when the auction
-- exists with identical parameters; ALREADY_EXISTS (8) when they differ.
local k = KEYS[1]
local reserve, inc, ends = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', k) == 1 then
  local cur = redis.call('HMGET', k, 'reserve', 'inc', 'ends')
  if cur[1] == reserve and cur[2] == inc and cur[3] == ends then
    return {0, ZERO, ZERO, 1}
  end
  return {8, ZERO, ZERO, 0}
end
redis.call('HSET', k, 'reserve', reserve, 'inc', inc, 'ends', ends,
  'high', ZERO, 'bidder', ZERO, 'count', ZERO, 'closed', '0')
return {0, ZERO, ZERO, 0}
