-- open_sale.lua: OPEN_SALE.
-- KEYS[1] = gavel:{s:ID}             (hash: stock sold limit starts ends)
-- ARGV    = stock, per_buyer_limit, starts_at_ms, ends_at_ms
-- Returns {status, 0, 0, replayed}: OK, OK replayed (identical), ALREADY_EXISTS.
local k = KEYS[1]
local stock, limit, starts, ends = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', k) == 1 then
  local cur = redis.call('HMGET', k, 'stock', 'limit', 'starts', 'ends')
  if cur[1] == stock and cur[2] == limit and cur[3] == starts and cur[4] == ends then
    return {0, ZERO, ZERO, 1}
  end
  return {8, ZERO, ZERO, 0}
end
redis.call('HSET', k, 'stock', stock, 'sold', ZERO, 'limit', limit, 'starts', starts, 'ends', ends)
return {0, ZERO, ZERO, 0}
