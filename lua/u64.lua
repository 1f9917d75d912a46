-- u64.lua: exact unsigned 64-bit arithmetic on decimal strings, prepended to
-- every Gavel script. Lua numbers are doubles: above 2^53 two different
-- amounts can compare equal, and a higher bid could lose. Amounts, stock and
-- counts therefore travel and are stored as 20-digit zero-padded decimal
-- strings, and equal-width digit strings compare exactly as strings.
--
-- This prelude runs on every call (a script's body is its whole text), so it
-- builds nothing it can avoid: constants are literals, and the functions,
-- closures (each an allocation on every run), are built by u64() where a
-- script needs them: `local add, sub, bar = u64()`.

local U64_MAX = '18446744073709551615'
local ZERO = '00000000000000000000'
local ONE = '00000000000000000001'
-- 2^53: below it, doubles hold every integer exactly.
local EXACT = 9007199254740992

local function u64()
  -- a + b on padded strings; returns nil when the sum exceeds u64::MAX.
  -- Arithmetic works on two 10-digit halves: each half is below 10^10, far
  -- inside the range where doubles are exact, and there is no per-digit loop.
  local function add(a, b)
    local l = tonumber(string.sub(a, 11, 20)) + tonumber(string.sub(b, 11, 20))
    local h = tonumber(string.sub(a, 1, 10)) + tonumber(string.sub(b, 1, 10))
    if l >= 1e10 then l = l - 1e10; h = h + 1 end
    if h >= 1e10 then return nil end
    local s = string.format('%010d%010d', h, l)
    if s > U64_MAX then return nil end
    return s
  end

  -- a - b on padded strings, a >= b.
  local function sub(a, b)
    local l = tonumber(string.sub(a, 11, 20)) - tonumber(string.sub(b, 11, 20))
    local h = tonumber(string.sub(a, 1, 10)) - tonumber(string.sub(b, 1, 10))
    if l < 0 then l = l + 1e10; h = h - 1 end
    return string.format('%010d%010d', h, l)
  end

  -- The bar a bid must clear to beat v by the increment inc (0 counts as 1):
  -- the highest amount that does not, v + inc - 1, as 20 digits, or '~'
  -- (above every digit string: nothing clears it) past u64::MAX. A bid wins
  -- iff amount > bar. With an increment of 0 or 1 the bar is v itself, no
  -- arithmetic; else doubles where they are exact, the halves above.
  local function bar(v, inc)
    if inc <= ONE then
      return v
    end
    local n = tonumber(v) + tonumber(inc)
    if n < EXACT then
      return string.format('%020d', n - 1)
    end
    return add(v, sub(inc, ONE)) or '~'
  end
  return add, sub, bar
end
