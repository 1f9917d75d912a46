-- u64.lua: exact unsigned 64-bit arithmetic on decimal strings, prepended to
-- every Gavel script. Lua numbers are doubles: above 2^53 two different
-- amounts can compare equal, and a higher bid could lose. Amounts, stock and
-- counts therefore travel and are stored as 20-digit zero-padded decimal
-- strings, and equal-width digit strings compare exactly as strings.

local U64_MAX = '18446744073709551615'

-- Zero-pads a decimal string to 20 digits.
local function pad(s)
  return string.rep('0', 20 - #s) .. s
end

-- Arithmetic works on two 10-digit halves: each half is below 10^10, far
-- inside the range where doubles are exact, and there is no per-digit loop.
local function halves(s)
  return tonumber(string.sub(s, 1, 10)), tonumber(string.sub(s, 11, 20))
end

local function join(h, l)
  return string.format('%010d%010d', h, l)
end

-- a + b on padded strings; returns nil when the sum exceeds u64::MAX.
local function add(a, b)
  local ah, al = halves(a)
  local bh, bl = halves(b)
  local l, h = al + bl, ah + bh
  if l >= 1e10 then l = l - 1e10; h = h + 1 end
  if h >= 1e10 then return nil end
  local s = join(h, l)
  if s > U64_MAX then return nil end
  return s
end

-- a - b on padded strings, a >= b.
local function sub(a, b)
  local ah, al = halves(a)
  local bh, bl = halves(b)
  local l, h = al - bl, ah - bh
  if l < 0 then l = l + 1e10; h = h - 1 end
  return join(h, l)
end

local ZERO = pad('0')
local ONE = pad('1')
