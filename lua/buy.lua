-- buy.lua: BUY, all of the quantity or nothing.
-- KEYS[1] = gavel:{s:ID}                (hash: stock sold limit starts ends)
-- KEYS[2] = gavel:{s:ID}:held           (hash: buyer -> units held)
-- KEYS[3] = gavel:{s:ID}:order:ORDER_ID (idempotency: "buyer|qty|status|value|aux",
--                                        written for an accepted purchase only)
-- ARGV    = buyer, quantity, now_ms, window_ms
-- Returns {status, stock_left, held, replayed[, sold]} (sold only when
-- accepted), or {-1} on a reused order_id with different fields
-- (IDEMPOTENCY_CONFLICT).
--
-- A rejected purchase (NOT_STARTED, CLOSED, SOLD_OUT, LIMIT_EXCEEDED) writes
-- nothing, as in bid.lua: PROTOCOL.md §7 lets a rejected key be forgotten,
-- so a retry is evaluated afresh (a NOT_STARTED retried once the sale has
-- started may be OK; it is still one purchase, its key stored then). Keys that earlier versions stored for
-- rejections still replay until they expire.
local add, sub = u64()
local k, held_k, idem = KEYS[1], KEYS[2], KEYS[3]
local buyer, qty, now, window = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local s = redis.call('HMGET', k, 'stock', 'sold', 'limit', 'starts', 'ends')
if not s[1] then
  return {4, ZERO, ZERO, 0}                                   -- NOT_FOUND
end
local stock, sold, limit, starts, ends = s[1], s[2], s[3], s[4], s[5]

local seen = redis.call('GET', idem)
if seen then
  local b, q, st, v, x = string.match(seen, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)$')
  if b == buyer and q == qty then
    return {tonumber(st), v, x, 1}
  end
  return {-1}
end

local held = redis.call('HGET', held_k, buyer) or ZERO
local function reject(status)
  return {status, sub(stock, sold), held, 0}
end

if now < starts then
  return reject(7)                                            -- NOT_STARTED
end
if ends ~= ZERO and now >= ends then
  return reject(3)                                            -- CLOSED
end
if qty > sub(stock, sold) then
  return reject(5)                                            -- SOLD_OUT, no partial fill
end
local new_held = add(held, qty)
if limit ~= ZERO and (new_held == nil or new_held > limit) then
  return reject(6)                                            -- LIMIT_EXCEEDED
end
sold = add(sold, qty)
held = new_held
redis.call('HSET', k, 'sold', sold)
redis.call('HSET', held_k, buyer, held)
local left = sub(stock, sold)
redis.call('SET', idem, buyer .. '|' .. qty .. '|0|' .. left .. '|' .. held, 'PX', window)
return {0, left, held, 0, sold}                               -- OK; sold: for the node's log
