-- bid.lua: BID, as one atomic compare-and-set.
-- KEYS[1] = gavel:{a:ID}              (hash: reserve inc ends high bidder count closed)
-- KEYS[2] = gavel:{a:ID}:bid:BID_ID   (the idempotency key: "bidder|amount|status|value|aux")
-- ARGV    = bidder, amount, now_ms, window_ms, channel, auction_id
-- Every key carries the auction's hash tag, so the script touches one
-- Redis Cluster slot. Returns {status, value, aux, replayed[, bid_count,
-- ends]} (value/aux: high bid and bidder after the request; bid_count after
-- it, ZERO unless accepted; ends: the auction's end time, for a node's OUTBID
-- filter; both absent from replays), or {-1} when the bid_id was used before
-- with different fields (IDEMPOTENCY_CONFLICT). Statuses are the wire
-- contract's codes.
local k, idem = KEYS[1], KEYS[2]
local bidder, amount, now, window = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local channel, auction = ARGV[5], ARGV[6]

local a = redis.call('HMGET', k, 'reserve', 'inc', 'ends', 'high', 'bidder', 'count', 'closed')
if not a[1] then
  return {4, ZERO, ZERO, 0}                                   -- NOT_FOUND
end
local reserve, inc, ends, high, hbidder, count, closed =
  a[1], a[2], a[3], a[4], a[5], a[6], a[7]

-- A retry: replay the first outcome, or refuse a reused key.
local seen = redis.call('GET', idem)
if seen then
  local b, amt, st, v, x = string.match(seen, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)$')
  if b == bidder and amt == amount then
    return {tonumber(st), v, x, 1}
  end
  return {-1}
end

local function remember(status, value, aux)
  redis.call('SET', idem, bidder .. '|' .. amount .. '|' .. status .. '|' .. value .. '|' .. aux,
    'PX', window)
  return {status, value, aux, 0, ZERO, ends}
end

-- An auction past its end closes on first touch.
if closed == '0' and ends ~= ZERO and now >= ends then
  closed = '1'
  redis.call('HSET', k, 'closed', '1')
  redis.call('PUBLISH', channel, 'C|' .. auction .. '|' .. high .. '|' .. hbidder)
end
if closed == '1' then
  return remember(3, high, hbidder)                         -- CLOSED
end
if amount < reserve then
  return remember(2, high, hbidder)                         -- BELOW_RESERVE
end
local step = inc
if step == ZERO then step = ONE end
local needed = add(high, step)
-- Ties lose; an unbeatable high bid (overflow) makes every bid OUTBID.
if needed == nil or amount < needed then
  return remember(1, high, hbidder)                         -- OUTBID
end
count = add(count, ONE)
redis.call('HSET', k, 'high', amount, 'bidder', bidder, 'count', count)
redis.call('PUBLISH', channel, 'B|' .. auction .. '|' .. amount .. '|' .. bidder .. '|' .. count)
local r = remember(0, amount, bidder)                       -- OK
r[5] = count                                                -- for the node's log
return r
