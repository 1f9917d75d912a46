-- open_auction.lua: OPEN_AUCTION.
-- KEYS[1] = gavel:{a:ID}          (hash: the auction)
-- ARGV    = reserve, min_increment, ends_at_ms   (20-digit decimal strings)
-- Returns {status, value, aux, replayed}: OK; OK replayed when the auction
-- exists with identical parameters; ALREADY_EXISTS (8) when they differ.
-- `bar` is what a bid must exceed to win (bid.lua keeps it current): the
-- first increment, or the reserve; `count` is plain decimal (bid.lua tells
-- hashes of earlier versions, whose counts are 20 digits wide, by it).
local k = KEYS[1]
local reserve, inc, ends = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HMGET', k, 'reserve', 'inc', 'ends')
if cur[1] then
  if cur[1] == reserve and cur[2] == inc and cur[3] == ends then
    return {0, ZERO, ZERO, 1}
  end
  return {8, ZERO, ZERO, 0}
end
local _, sub, bar = u64()
local b = bar(ZERO, inc)
if reserve ~= ZERO then
  local r = sub(reserve, ONE)
  if r > b then b = r end
end
redis.call('HSET', k, 'reserve', reserve, 'inc', inc, 'ends', ends,
  'high', ZERO, 'bidder', ZERO, 'count', '0', 'closed', '0', 'bar', b)
return {0, ZERO, ZERO, 0}
