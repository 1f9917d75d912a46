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

-- a + b on padded strings; returns nil when the sum exceeds u64::MAX.
local function add(a, b)
  local out, carry = {}, 0
  for i = 20, 1, -1 do
    local d = a:byte(i) - 48 + b:byte(i) - 48 + carry
    carry = d >= 10 and 1 or 0
    out[i] = string.char(48 + d % 10)
  end
  if carry == 1 then return nil end
  local s = table.concat(out)
  if s > U64_MAX then return nil end
  return s
end

-- a - b on padded strings, a >= b.
local function sub(a, b)
  local out, borrow = {}, 0
  for i = 20, 1, -1 do
    local d = (a:byte(i) - 48) - (b:byte(i) - 48) - borrow
    if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
    out[i] = string.char(48 + d)
  end
  return table.concat(out)
end

local ZERO = pad('0')
local ONE = pad('1')
