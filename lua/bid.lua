-- bid.lua: BID, as one atomic compare-and-set.
-- KEYS[1] = gavel:{a:ID}   (hash: reserve inc ends high bidder count closed
--                           bar, and the keys of accepted bids)
-- ARGV    = bidder, amount, bid_id, now_ms, window_ms, record
--           (bidder, amount, now_ms: 20 digits; bid_id, window_ms: decimal;
--           record: "bidder|amount|now_ms", unpadded decimal)
-- Returns {status, value, aux, replayed[, ends[, bid_count]]}: value/aux are
-- the high bid and bidder after the request; ends (the auction's end time,
-- for a node's OUTBID filter) comes with fresh outcomes when the auction has
-- one, and always with OK, which also carries bid_count; a replay carries
-- neither. {-1}: the bid_id was used before with other fields
-- (IDEMPOTENCY_CONFLICT). Statuses are the wire contract's codes.
--
-- What one call costs is what Redis spends on it, so the common paths are
-- short: one HMGET reads everything a bid needs, the bid's key included;
-- `bar`, the highest amount that loses (high + increment - 1, or reserve -
-- 1), is kept up to date by each accepted bid, so judging a bid takes
-- string compares, and accepting one takes arithmetic only for an increment
-- above 1; a rejected bid writes nothing (PROTOCOL.md §7: rejected keys may
-- be forgotten, a retry is evaluated afresh); an accepted bid is one HSET
-- (its key goes into the auction's hash) and one SPUBLISH on the auction's
-- own shard channel, gavel:{a:ID}:updates (only nodes whose clients watch
-- the auction subscribe to it; on a cluster it stays on this slot's master).
--
-- Keys of accepted bids are fields of the auction's hash: field bid_id,
-- value the record (bidder|amount|now_ms). Field names of keys are digits;
-- the auction's own fields are not. Every 32nd accepted bid is a checkpoint:
-- once a key may have expired (field `due`, ms), each checkpoint sweeps a
-- stretch of the hash (HSCAN COUNT 64 from cursor `sc`) and deletes the
-- keys older than the window; when a pass ends, `due` becomes the time its
-- oldest kept key (`pm`) expires. A busy auction so holds about a window's
-- worth of keys plus what accrues during a pass, and sweeping costs nothing
-- before anything can have expired.
--
-- A checkpoint also writes `ht`, a value longer than Redis's
-- hash-max-listpack-value (64): the hash becomes a hashtable. A small hash
-- is a listpack, compact but searched from its start for every field, and
-- the bid's own key, usually absent, is searched to its end: past a few
-- dozen keys that costs more than the rest of the HMGET.
--
-- Hashes written by earlier versions (no `bar` field) are brought up to
-- date on first touch; their counts are 20 digits wide, and while that lasts
-- a key missing from the hash is also looked up where those versions kept
-- it (gavel:{a:ID}:bid:BID_ID, under the same hash tag).
local k = KEYS[1]
local bidder, amount, id, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local a = redis.call('HMGET', k, 'bar', 'reserve', 'ends', 'closed', 'high', 'bidder', id,
  'count', 'inc')
local b, ends, high, hbidder = a[1], a[3], a[5], a[6]
if not b then
  if not a[2] then
    return {4, '0', '0', 0}                                   -- NOT_FOUND
  end
  -- Written by an earlier version: compute what it lacks, once.
  local _, sub, bar = u64()
  b = bar(high, a[9])
  if a[2] ~= ZERO and sub(a[2], ONE) > b then b = sub(a[2], ONE) end
  redis.call('HSET', k, 'bar', b)
end

-- A retry of an accepted bid: replay its outcome, or refuse a reused key.
local seen = a[7]
if not seen and #a[8] == 20 then
  -- An earlier version's key: "bidder|amount|status|value|aux".
  local old = redis.call('GET', k .. ':bid:' .. id)
  if old then
    local ob, amt, st, v, x = string.match(old, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)$')
    if ob == bidder and amt == amount then
      return {tonumber(st), v, x, 1}
    end
    return {-1}
  end
end
if seen then
  local p = string.match(ARGV[6], '^%d+|%d+|')
  if string.sub(seen, 1, #p) == p then
    return {0, amount, bidder, 1}                             -- OK, replayed
  end
  return {-1}
end

local e = nil
if ends ~= ZERO then e = ends end
-- An auction past its end closes on first touch.
if a[4] == '1' or (e and now >= ends) then
  if a[4] ~= '1' then
    redis.call('HSET', k, 'closed', '1')
    redis.call('SPUBLISH', k .. ':updates',
      'C|' .. string.sub(k, 10, -2) .. '|' .. high .. '|' .. hbidder)
  end
  return {3, high, hbidder, 0, e}                             -- CLOSED
end
-- bar >= reserve - 1, and bar >= high when there is one: ties lose.
if amount <= b then
  if amount < a[2] then
    return {2, high, hbidder, 0, e}                           -- BELOW_RESERVE
  end
  return {1, high, hbidder, 0, e}                             -- OUTBID
end

local c = tonumber(a[8]) + 1
local count
if #a[8] == 20 then
  count = string.format('%020d', c)
else
  count = string.format('%d', c)
end
if a[9] <= ONE then
  b = amount                                                  -- bar(amount, inc)
else
  local _, _, bar = u64()
  b = bar(amount, a[9])
end
if c % 32 ~= 0 then
  redis.call('HSET', k, 'bar', b, 'high', amount, 'bidder', bidder, 'count', count,
    id, ARGV[6])
else
  -- A checkpoint: sweep a stretch of the hash if a key may have expired.
  local w = {'HSET', k, 'bar', b, 'high', amount, 'bidder', bidder, 'count', count,
    id, ARGV[6],
    'ht', 'a hashtable finds a field at once: this value is over 64 bytes long'}
  local s = redis.call('HMGET', k, 'due', 'sc', 'pm')
  local t = tonumber(now)
  if not s[1] then
    -- Keys so far are no younger than now: none expires before now + window.
    w[#w + 1] = 'due'; w[#w + 1] = string.format('%d', t + tonumber(ARGV[5]))
  elseif t >= tonumber(s[1]) then
    -- One step of a pass over the hash; pm: the oldest key the pass kept (or
    -- its start: keys added behind the cursor are younger).
    local cursor, pm = s[2] or '0', tonumber(s[3])
    if cursor == '0' or not pm then pm = t end
    local horizon = t - tonumber(ARGV[5])
    local r = redis.call('HSCAN', k, cursor, 'COUNT', 64)
    local kv, dead = r[2], {}
    for i = 1, #kv, 2 do
      local b = string.byte(kv[i])
      if b >= 48 and b <= 57 then
        local at = tonumber(string.match(kv[i + 1], '(%d+)$'))
        if at then
          if at <= horizon then
            dead[#dead + 1] = kv[i]
          elseif at < pm then
            pm = at
          end
        end
      end
    end
    if #dead > 0 then
      redis.call('HDEL', k, unpack(dead))
    end
    w[#w + 1] = 'sc'; w[#w + 1] = r[1]
    w[#w + 1] = 'pm'; w[#w + 1] = string.format('%d', pm)
    if r[1] == '0' then
      -- The pass is over: the next starts when its oldest key expires.
      w[#w + 1] = 'due'; w[#w + 1] = string.format('%d', pm + tonumber(ARGV[5]))
    end
  end
  redis.call(unpack(w))
end
redis.call('SPUBLISH', k .. ':updates',
  'B|' .. string.sub(k, 10, -2) .. '|' .. amount .. '|' .. bidder .. '|' .. count)
return {0, amount, bidder, 0, ends, count}                    -- OK
