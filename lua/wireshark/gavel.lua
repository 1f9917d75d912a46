-- Wireshark / tshark dissector for the Gavel wire protocol, version 1.
--
-- The protocol is described (normatively, with byte offsets) in PROTOCOL.md
-- at the repository root. Every frame, in both directions, is an 8-byte header (type:u8,
-- flags:u8, length:u16, request_id:u32, big-endian) and `length` payload
-- bytes. Request types are below 0x80, replies and pushes 0x80 and above, so
-- each frame is decoded by its type alone, whatever the direction.
--
-- Usage (see README.md beside this file):
--   tshark -X lua_script:lua/wireshark/gavel.lua -r capture.pcap -Y gavel
--   tshark -X lua_script:lua/wireshark/gavel.lua -d tcp.port==7171,gavel -r capture.pcap -Y gavel
-- or copy this file into ~/.local/lib/wireshark/plugins/.
--
-- TCP reassembly is done by dissect_tcp_pdus: a frame split over segments is
-- decoded once it is complete, and several frames in one segment are all
-- decoded (the Info column lists them, separated by " | ").

local gavel = Proto("gavel", "Gavel Wire Protocol v1")

local HEADER_LEN = 8
local DEFAULT_PORT = 7070
local FLAG_REPLAYED = 0x01

-- Message types -------------------------------------------------------------

local T = {
    HELLO = 0x01, PING = 0x02,
    OPEN_AUCTION = 0x10, BID = 0x11, CLOSE_AUCTION = 0x12, GET_AUCTION = 0x13,
    OPEN_SALE = 0x20, BUY = 0x21, GET_SALE = 0x22,
    SUBSCRIBE = 0x30, UNSUBSCRIBE = 0x31,
    WELCOME = 0x81, PONG = 0x82, RESULT = 0x90, AUCTION = 0x93, SALE = 0xA2,
    ERROR = 0xBF, BID_UPDATE = 0xC0, AUCTION_CLOSED = 0xC1,
}

local type_names = {}
for name, code in pairs(T) do type_names[code] = name end

local status_names = {
    [0] = "OK", [1] = "OUTBID", [2] = "BELOW_RESERVE", [3] = "CLOSED",
    [4] = "NOT_FOUND", [5] = "SOLD_OUT", [6] = "LIMIT_EXCEEDED",
    [7] = "NOT_STARTED", [8] = "ALREADY_EXISTS",
}

local error_names = {
    [1] = "MALFORMED", [2] = "UNKNOWN_TYPE", [3] = "FRAME_TOO_LARGE",
    [4] = "UNAUTHORIZED", [5] = "BUSY", [6] = "RATE_LIMITED",
    [7] = "UNAVAILABLE", [8] = "IDEMPOTENCY_CONFLICT",
    [9] = "UNSUPPORTED_VERSION", [10] = "SHUTTING_DOWN",
    [11] = "IN_DOUBT", -- may have executed: retry with the same bid_id/order_id
}

local state_names = { [0] = "OPEN", [1] = "CLOSED", [2] = "NOT_STARTED" }

-- Fields --------------------------------------------------------------------

local f = {}
local function u64(abbr, name) f[abbr] = ProtoField.uint64("gavel." .. abbr, name, base.DEC) end
local function u32(abbr, name) f[abbr] = ProtoField.uint32("gavel." .. abbr, name, base.DEC) end
local function u16(abbr, name) f[abbr] = ProtoField.uint16("gavel." .. abbr, name, base.DEC) end

-- header
f.type = ProtoField.uint8("gavel.type", "Type", base.HEX, type_names)
f.flags = ProtoField.uint8("gavel.flags", "Flags", base.HEX)
f.flags_replayed = ProtoField.bool("gavel.flags.replayed", "REPLAYED", 8,
    { "Replayed: stored outcome of an earlier request", "Not replayed" }, FLAG_REPLAYED)
f.flags_reserved = ProtoField.uint8("gavel.flags.reserved", "Reserved bits", base.HEX, nil, 0xFE)
f.length = ProtoField.uint16("gavel.length", "Payload length", base.DEC)
f.request_id = ProtoField.uint32("gavel.request_id", "Request ID", base.DEC_HEX)
f.payload = ProtoField.bytes("gavel.payload", "Payload")
local ft = frametype or {} -- frame-link icons, Wireshark >= 3.4
f.response_in = ProtoField.framenum("gavel.response_in", "Response in", base.NONE, ft.RESPONSE)
f.response_to = ProtoField.framenum("gavel.response_to", "Response to", base.NONE, ft.REQUEST)
f.response_time = ProtoField.relative_time("gavel.response_time", "Response time",
    "Time from the request's frame to this reply's frame")

-- requests
u16("hello.version", "Version")
f["hello.token_len"] = ProtoField.uint8("gavel.hello.token_len", "Token length", base.DEC)
f["hello.token"] = ProtoField.bytes("gavel.hello.token", "Token")
f["ping.payload"] = ProtoField.bytes("gavel.ping.payload", "Payload")
u64("open_auction.auction_id", "Auction ID")
u64("open_auction.reserve", "Reserve")
u64("open_auction.min_increment", "Minimum increment")
u64("open_auction.ends_at_ms", "Ends at (ms)")
u64("bid.auction_id", "Auction ID")
u64("bid.bidder_id", "Bidder ID")
u64("bid.amount", "Amount")
u64("bid.bid_id", "Bid ID (idempotency key)")
u64("close_auction.auction_id", "Auction ID")
u64("get_auction.auction_id", "Auction ID")
u64("open_sale.sku_id", "SKU ID")
u64("open_sale.stock", "Stock")
u32("open_sale.per_buyer_limit", "Per-buyer limit")
u64("open_sale.starts_at_ms", "Starts at (ms)")
u64("open_sale.ends_at_ms", "Ends at (ms)")
u64("buy.sku_id", "SKU ID")
u64("buy.buyer_id", "Buyer ID")
u32("buy.quantity", "Quantity")
u64("buy.order_id", "Order ID (idempotency key)")
u64("get_sale.sku_id", "SKU ID")
u64("subscribe.auction_id", "Auction ID")
u64("unsubscribe.auction_id", "Auction ID")

-- replies and pushes
u16("welcome.version", "Version")
u16("welcome.node_id", "Node ID")
u16("welcome.shards", "Shards")
u16("welcome.max_payload", "Max payload")
f["pong.payload"] = ProtoField.bytes("gavel.pong.payload", "Payload")
f["result.status"] = ProtoField.uint8("gavel.result.status", "Status", base.DEC, status_names)
u64("result.value", "Value")
u64("result.aux", "Aux")
u64("auction.auction_id", "Auction ID")
f["auction.state"] = ProtoField.uint8("gavel.auction.state", "State", base.DEC, state_names)
u64("auction.high_bid", "High bid")
u64("auction.high_bidder", "High bidder")
u64("auction.bid_count", "Bid count")
u64("auction.reserve", "Reserve")
u64("auction.min_increment", "Minimum increment")
u64("auction.ends_at_ms", "Ends at (ms)")
u64("sale.sku_id", "SKU ID")
f["sale.state"] = ProtoField.uint8("gavel.sale.state", "State", base.DEC, state_names)
u64("sale.stock", "Stock")
u64("sale.sold", "Sold")
u32("sale.per_buyer_limit", "Per-buyer limit")
u64("sale.starts_at_ms", "Starts at (ms)")
u64("sale.ends_at_ms", "Ends at (ms)")
f["error.code"] = ProtoField.uint16("gavel.error.code", "Error code", base.DEC, error_names)
u16("error.msg_len", "Message length")
f["error.message"] = ProtoField.string("gavel.error.message", "Message", base.UNICODE)
u64("bid_update.auction_id", "Auction ID")
u64("bid_update.high_bid", "High bid")
u64("bid_update.high_bidder", "High bidder")
u64("bid_update.bid_count", "Bid count")
u64("auction_closed.auction_id", "Auction ID")
u64("auction_closed.winning_bid", "Winning bid")
u64("auction_closed.winner", "Winner (0 = unsold)")

local field_list = {}
for _, field in pairs(f) do field_list[#field_list + 1] = field end
gavel.fields = field_list

local ef_malformed = ProtoExpert.new("gavel.malformed", "Malformed Gavel frame",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_unknown = ProtoExpert.new("gavel.unknown_type", "Unknown Gavel message type",
    expert.group.UNDECODED, expert.severity.WARN)
local ef_replayed = ProtoExpert.new("gavel.replayed", "Replayed outcome (idempotency key seen before)",
    expert.group.SEQUENCE, expert.severity.NOTE)
local ef_error = ProtoExpert.new("gavel.error", "Gavel ERROR reply",
    expert.group.RESPONSE_CODE, expert.severity.WARN)
gavel.experts = { ef_malformed, ef_unknown, ef_replayed, ef_error }

-- Preferences ---------------------------------------------------------------

gavel.prefs.port = Pref.uint("TCP port", DEFAULT_PORT,
    "TCP port of the Gavel server (Decode As also works)")

-- Payload layouts -----------------------------------------------------------
-- Each entry: list of { field key, size, info label or nil }, fixed total size.

local layouts = {
    [T.OPEN_AUCTION] = { size = 32, { "open_auction.auction_id", 8, "auction" },
        { "open_auction.reserve", 8, "reserve" }, { "open_auction.min_increment", 8, "min_increment" },
        { "open_auction.ends_at_ms", 8, "ends_at_ms" } },
    [T.BID] = { size = 32, { "bid.auction_id", 8, "auction" }, { "bid.bidder_id", 8, "bidder" },
        { "bid.amount", 8, "amount" }, { "bid.bid_id", 8, "bid_id" } },
    [T.CLOSE_AUCTION] = { size = 8, { "close_auction.auction_id", 8, "auction" } },
    [T.GET_AUCTION] = { size = 8, { "get_auction.auction_id", 8, "auction" } },
    [T.OPEN_SALE] = { size = 36, { "open_sale.sku_id", 8, "sku" }, { "open_sale.stock", 8, "stock" },
        { "open_sale.per_buyer_limit", 4, "per_buyer_limit" }, { "open_sale.starts_at_ms", 8, "starts_at_ms" },
        { "open_sale.ends_at_ms", 8, "ends_at_ms" } },
    [T.BUY] = { size = 28, { "buy.sku_id", 8, "sku" }, { "buy.buyer_id", 8, "buyer" },
        { "buy.quantity", 4, "quantity" }, { "buy.order_id", 8, "order_id" } },
    [T.GET_SALE] = { size = 8, { "get_sale.sku_id", 8, "sku" } },
    [T.SUBSCRIBE] = { size = 8, { "subscribe.auction_id", 8, "auction" } },
    [T.UNSUBSCRIBE] = { size = 8, { "unsubscribe.auction_id", 8, "auction" } },
    [T.WELCOME] = { size = 8, { "welcome.version", 2, "version" }, { "welcome.node_id", 2, "node_id" },
        { "welcome.shards", 2, "shards" }, { "welcome.max_payload", 2, "max_payload" } },
    [T.RESULT] = { size = 17, { "result.status", 1, nil, status_names },
        { "result.value", 8, "value" }, { "result.aux", 8, "aux" } },
    [T.AUCTION] = { size = 57, { "auction.auction_id", 8, "auction" }, { "auction.state", 1, "state", state_names },
        { "auction.high_bid", 8, "high_bid" }, { "auction.high_bidder", 8, "high_bidder" },
        { "auction.bid_count", 8, "bid_count" }, { "auction.reserve", 8, "reserve" },
        { "auction.min_increment", 8, "min_increment" }, { "auction.ends_at_ms", 8, "ends_at_ms" } },
    [T.SALE] = { size = 45, { "sale.sku_id", 8, "sku" }, { "sale.state", 1, "state", state_names },
        { "sale.stock", 8, "stock" }, { "sale.sold", 8, "sold" },
        { "sale.per_buyer_limit", 4, "per_buyer_limit" }, { "sale.starts_at_ms", 8, "starts_at_ms" },
        { "sale.ends_at_ms", 8, "ends_at_ms" } },
    [T.BID_UPDATE] = { size = 32, { "bid_update.auction_id", 8, "auction" },
        { "bid_update.high_bid", 8, "high_bid" }, { "bid_update.high_bidder", 8, "high_bidder" },
        { "bid_update.bid_count", 8, "bid_count" } },
    [T.AUCTION_CLOSED] = { size = 24, { "auction_closed.auction_id", 8, "auction" },
        { "auction_closed.winning_bid", 8, "winning_bid" }, { "auction_closed.winner", 8, "winner" } },
}

local function read_uint(range, size)
    if size == 8 then return range:uint64() end
    return range:uint()
end

-- Adds the fields of a fixed layout; returns the Info text after the type name.
local function dissect_fixed(layout, payload, tree)
    local parts = {}
    local off = 0
    for _, item in ipairs(layout) do
        local key, size, label, names = item[1], item[2], item[3], item[4]
        local range = payload(off, size)
        tree:add(f[key], range)
        local v = read_uint(range, size)
        local shown = tostring(v)
        if names then shown = names[v] or ("unknown(" .. shown .. ")") end
        if label then
            parts[#parts + 1] = label .. "=" .. shown
        else
            parts[#parts + 1] = shown
        end
        off = off + size
    end
    return table.concat(parts, " ")
end

local function printable(range)
    local s = range:raw()
    if s:find("[^%g ]") then return "0x" .. tostring(range:bytes()) end
    return '"' .. s .. '"'
end

-- Returns the Info text of the payload; adds expert info on problems.
local function dissect_payload(mtype, payload, len, tree, item)
    local layout = layouts[mtype]
    if layout then
        if len ~= layout.size then
            tree:add_proto_expert_info(ef_malformed,
                string.format("%s payload must be %d bytes, got %d", type_names[mtype], layout.size, len))
            if len > 0 then tree:add(f.payload, payload) end
            return "(malformed: length " .. len .. ", expected " .. layout.size .. ")"
        end
        local text = dissect_fixed(layout, payload, tree)
        if mtype == T.RESULT and payload(0, 1):uint() > 8 then
            tree:add_proto_expert_info(ef_malformed, "unknown RESULT status")
        end
        return text
    end
    if mtype == T.HELLO then
        if len < 3 then
            tree:add_proto_expert_info(ef_malformed, "HELLO payload shorter than 3 bytes")
            return "(malformed)"
        end
        tree:add(f["hello.version"], payload(0, 2))
        tree:add(f["hello.token_len"], payload(2, 1))
        local n = payload(2, 1):uint()
        if n > 0 and len >= 3 + n then tree:add(f["hello.token"], payload(3, n)) end
        if len ~= 3 + n then
            tree:add_proto_expert_info(ef_malformed, "token_len does not match payload length")
        end
        return string.format("version=%d token_len=%d", payload(0, 2):uint(), n)
    end
    if mtype == T.PING or mtype == T.PONG then
        local key = (mtype == T.PING) and "ping.payload" or "pong.payload"
        if len == 0 then return "len=0" end
        tree:add(f[key], payload)
        return string.format("len=%d payload=%s", len, printable(payload))
    end
    if mtype == T.ERROR then
        if len < 4 then
            tree:add_proto_expert_info(ef_malformed, "ERROR payload shorter than 4 bytes")
            return "(malformed)"
        end
        local code = payload(0, 2):uint()
        local n = payload(2, 2):uint()
        tree:add(f["error.code"], payload(0, 2))
        tree:add(f["error.msg_len"], payload(2, 2))
        local msg = ""
        if n > 0 and len >= 4 + n then
            tree:add_packet_field(f["error.message"], payload(4, n), ENC_UTF_8)
            msg = payload(4, n):string(ENC_UTF_8)
        end
        if len ~= 4 + n then
            tree:add_proto_expert_info(ef_malformed, "msg_len does not match payload length")
        end
        item:add_proto_expert_info(ef_error, "ERROR " .. (error_names[code] or tostring(code)))
        return string.format('%s message="%s"', error_names[code] or ("unknown(" .. code .. ")"), msg)
    end
    tree:add_proto_expert_info(ef_unknown, string.format("unknown message type 0x%02x", mtype))
    if len > 0 then tree:add(f.payload, payload) end
    return string.format("(unknown type 0x%02x, %d bytes)", mtype, len)
end

-- Request/response matching -------------------------------------------------
-- Keyed by "client endpoint > server endpoint # request_id"; filled on the
-- first pass over the capture (tshark -2 or the GUI then show both links).

local requests = {}  -- key -> { frame number, absolute time } of the request
local responses = {} -- key .. "@" .. request frame -> frame number of the reply

function gavel.init()
    requests = {}
    responses = {}
end

local function conv_key(pinfo, is_request, request_id)
    local a = tostring(pinfo.src) .. ":" .. tostring(pinfo.src_port)
    local b = tostring(pinfo.dst) .. ":" .. tostring(pinfo.dst_port)
    if is_request then return a .. ">" .. b .. "#" .. request_id end
    return b .. ">" .. a .. "#" .. request_id
end

local function track(pinfo, tree, mtype, request_id)
    if mtype == T.BID_UPDATE or mtype == T.AUCTION_CLOSED then return end -- pushes
    local is_request = mtype < 0x80
    local key = conv_key(pinfo, is_request, request_id)
    if is_request then
        if not pinfo.visited then requests[key] = { pinfo.number, pinfo.abs_ts } end
        local rsp = responses[key .. "@" .. pinfo.number]
        if rsp then tree:add(f.response_in, rsp):set_generated() end
    else
        local req = requests[key]
        if req then
            local frame, ts = req[1], req[2]
            if not pinfo.visited then responses[key .. "@" .. frame] = pinfo.number end
            tree:add(f.response_to, frame):set_generated()
            local d = pinfo.abs_ts - ts
            if d >= 0 then
                local secs = math.floor(d)
                local nsecs = math.floor((d - secs) * 1e9 + 0.5)
                if nsecs >= 1000000000 then secs, nsecs = secs + 1, nsecs - 1000000000 end
                tree:add(f.response_time, NSTime.new(secs, nsecs)):set_generated()
            end
        end
    end
end

-- PDU dissection ------------------------------------------------------------

local function get_pdu_len(tvb, pinfo, offset)
    return HEADER_LEN + tvb(offset + 2, 2):uint()
end

local function dissect_pdu(tvb, pinfo, tree)
    local mtype = tvb(0, 1):uint()
    local flags = tvb(1, 1):uint()
    local len = tvb(2, 2):uint()
    local request_id = tvb(4, 4):uint()
    local name = type_names[mtype] or string.format("UNKNOWN(0x%02x)", mtype)

    local item = tree:add(gavel, tvb(0, HEADER_LEN + len))
    item:add(f.type, tvb(0, 1))
    local fl = item:add(f.flags, tvb(1, 1))
    fl:add(f.flags_replayed, tvb(1, 1))
    fl:add(f.flags_reserved, tvb(1, 1))
    item:add(f.length, tvb(2, 2))
    item:add(f.request_id, tvb(4, 4))

    local payload = nil -- dissect_payload never reads it when len is 0
    if len > 0 then payload = tvb(HEADER_LEN, len) end
    local text = dissect_payload(mtype, payload, len, item, item)
    track(pinfo, item, mtype, request_id)

    local summary = name
    if text ~= "" then summary = summary .. " " .. text end
    if flags % 2 == FLAG_REPLAYED then -- bit 0; no bit operators in Lua 5.2
        summary = summary .. " (replayed)"
        item:add_proto_expert_info(ef_replayed)
    end
    item:append_text(", " .. summary)

    -- pinfo.private lives for one dissection of one packet: the first frame
    -- of a packet replaces TCP's Info text, later ones are appended.
    pinfo.cols.protocol = "GAVEL"
    local n = tonumber(pinfo.private.gavel_pdus or "0")
    if n == 0 then
        pinfo.cols.info:set(summary)
    else
        pinfo.cols.info:append(" | " .. summary)
    end
    pinfo.private.gavel_pdus = tostring(n + 1)
    return HEADER_LEN + len
end

function gavel.dissector(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, HEADER_LEN, get_pdu_len, dissect_pdu, true)
    return tvb:len()
end

-- Registration (after gavel.dissector exists) ------------------------------

local tcp_port_table = DissectorTable.get("tcp.port")
local registered_port = DEFAULT_PORT
tcp_port_table:add(registered_port, gavel)

function gavel.prefs_changed()
    if gavel.prefs.port ~= registered_port then
        if registered_port ~= 0 then tcp_port_table:remove(registered_port, gavel) end
        registered_port = gavel.prefs.port
        if registered_port ~= 0 then tcp_port_table:add(registered_port, gavel) end
    end
end
