//! Typed messages of wire v1 and their encoders.
//!
//! Requests flow client → server; responses and pushes flow server → client.
//! Fixed-layout payloads are plain `Copy` structs; the two variable payloads a
//! request can carry (`PING` bytes, the `HELLO` token) are [`Bytes`] slices of
//! the buffer they were read from.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{msg_type, Frame, Header, HEADER_LEN};

/// Business outcome carried by a `RESULT` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    Outbid = 1,
    BelowReserve = 2,
    Closed = 3,
    NotFound = 4,
    SoldOut = 5,
    LimitExceeded = 6,
    NotStarted = 7,
    AlreadyExists = 8,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::Outbid,
        Status::BelowReserve,
        Status::Closed,
        Status::NotFound,
        Status::SoldOut,
        Status::LimitExceeded,
        Status::NotStarted,
        Status::AlreadyExists,
    ];

    pub fn from_u8(v: u8) -> Option<Status> {
        Status::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Outbid => "OUTBID",
            Status::BelowReserve => "BELOW_RESERVE",
            Status::Closed => "CLOSED",
            Status::NotFound => "NOT_FOUND",
            Status::SoldOut => "SOLD_OUT",
            Status::LimitExceeded => "LIMIT_EXCEEDED",
            Status::NotStarted => "NOT_STARTED",
            Status::AlreadyExists => "ALREADY_EXISTS",
        }
    }
}

/// Code carried by an `ERROR` frame: the request was not executed — except
/// [`ErrorCode::InDoubt`], whose request may have been executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ErrorCode {
    Malformed = 1,
    UnknownType = 2,
    FrameTooLarge = 3,
    Unauthorized = 4,
    Busy = 5,
    RateLimited = 6,
    Unavailable = 7,
    IdempotencyConflict = 8,
    UnsupportedVersion = 9,
    ShuttingDown = 10,
    /// The request may have executed, but its commit was not confirmed in
    /// time. Retry with the same `bid_id` / `order_id` to learn the outcome
    /// (the retry replays it if it was applied). The connection stays open.
    InDoubt = 11,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::Malformed,
        ErrorCode::UnknownType,
        ErrorCode::FrameTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Busy,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::IdempotencyConflict,
        ErrorCode::UnsupportedVersion,
        ErrorCode::ShuttingDown,
        ErrorCode::InDoubt,
    ];

    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        if v == 0 {
            return None;
        }
        ErrorCode::ALL.get(v as usize - 1).copied()
    }

    /// Whether the contract closes the connection after this error.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::FrameTooLarge
                | ErrorCode::Unauthorized
                | ErrorCode::UnsupportedVersion
                | ErrorCode::ShuttingDown
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Busy => "BUSY",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::InDoubt => "IN_DOUBT",
        }
    }
}

/// `state` field of `AUCTION` and `SALE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AuctionState {
    Open = 0,
    Closed = 1,
    /// Sales only.
    NotStarted = 2,
}

impl AuctionState {
    pub fn from_u8(v: u8) -> Option<AuctionState> {
        match v {
            0 => Some(AuctionState::Open),
            1 => Some(AuctionState::Closed),
            2 => Some(AuctionState::NotStarted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuctionState::Open => "OPEN",
            AuctionState::Closed => "CLOSED",
            AuctionState::NotStarted => "NOT_STARTED",
        }
    }
}

/// `OPEN_AUCTION` payload (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpenAuctionRequest {
    pub auction_id: u64,
    pub reserve: u64,
    pub min_increment: u64,
    pub ends_at_ms: u64,
}

/// `BID` payload (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BidRequest {
    pub auction_id: u64,
    pub bidder_id: u64,
    pub amount: u64,
    /// Idempotency key; never 0.
    pub bid_id: u64,
}

/// `OPEN_SALE` payload (36 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpenSaleRequest {
    pub sku_id: u64,
    pub stock: u64,
    pub per_buyer_limit: u32,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
}

/// `BUY` payload (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BuyRequest {
    pub sku_id: u64,
    pub buyer_id: u64,
    pub quantity: u32,
    /// Idempotency key; never 0.
    pub order_id: u64,
}

/// A client → server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello { version: u16, token: Bytes },
    Ping(Bytes),
    OpenAuction(OpenAuctionRequest),
    Bid(BidRequest),
    CloseAuction { auction_id: u64 },
    GetAuction { auction_id: u64 },
    OpenSale(OpenSaleRequest),
    Buy(BuyRequest),
    GetSale { sku_id: u64 },
    Subscribe { auction_id: u64 },
    Unsubscribe { auction_id: u64 },
}

/// `RESULT` payload (17 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultPayload {
    pub status: Status,
    pub value: u64,
    pub aux: u64,
}

impl ResultPayload {
    pub const fn new(status: Status, value: u64, aux: u64) -> Self {
        ResultPayload { status, value, aux }
    }
}

/// `AUCTION` payload (57 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuctionInfo {
    pub auction_id: u64,
    pub state: AuctionState,
    pub high_bid: u64,
    pub high_bidder: u64,
    pub bid_count: u64,
    pub reserve: u64,
    pub min_increment: u64,
    pub ends_at_ms: u64,
}

/// `SALE` payload (45 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SaleInfo {
    pub sku_id: u64,
    pub state: AuctionState,
    pub stock: u64,
    pub sold: u64,
    pub per_buyer_limit: u32,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
}

/// A server → client reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Welcome {
        version: u16,
        node_id: u16,
        shards: u16,
        max_payload: u16,
    },
    Pong(Bytes),
    Result(ResultPayload),
    Auction(AuctionInfo),
    Sale(SaleInfo),
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// A server-initiated message (`request_id` 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Push {
    BidUpdate {
        auction_id: u64,
        high_bid: u64,
        high_bidder: u64,
        bid_count: u64,
    },
    AuctionClosed {
        auction_id: u64,
        winning_bid: u64,
        winner: u64,
    },
}

/// Anything a client can receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    Response(Response),
    Push(Push),
}

// ---------------------------------------------------------------------------
// Encoding. Each encoder writes the header and payload in one go; the low-level
// `encode_*` functions let the server write replies without building an enum.
// ---------------------------------------------------------------------------

#[inline]
fn header(buf: &mut BytesMut, msg_type: u8, flags: u8, length: usize, request_id: u32) {
    debug_assert!(length <= u16::MAX as usize);
    buf.reserve(HEADER_LEN + length);
    Header {
        msg_type,
        flags,
        length: length as u16,
        request_id,
    }
    .put(buf);
}

/// Writes a `RESULT` frame.
#[inline]
pub fn encode_result(buf: &mut BytesMut, request_id: u32, flags: u8, r: &ResultPayload) {
    header(buf, msg_type::RESULT, flags, 17, request_id);
    buf.put_u8(r.status as u8);
    buf.put_u64(r.value);
    buf.put_u64(r.aux);
}

/// Writes an `ERROR` frame; the message is truncated to fit a u16 length.
pub fn encode_error(buf: &mut BytesMut, request_id: u32, code: ErrorCode, message: &str) {
    let mut msg = message.as_bytes();
    if msg.len() > u16::MAX as usize - 4 {
        let mut end = u16::MAX as usize - 4;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        msg = &msg[..end];
    }
    header(buf, msg_type::ERROR, 0, 4 + msg.len(), request_id);
    buf.put_u16(code as u16);
    buf.put_u16(msg.len() as u16);
    buf.put_slice(msg);
}

/// Writes an `AUCTION` frame.
pub fn encode_auction(buf: &mut BytesMut, request_id: u32, a: &AuctionInfo) {
    header(buf, msg_type::AUCTION, 0, 57, request_id);
    buf.put_u64(a.auction_id);
    buf.put_u8(a.state as u8);
    buf.put_u64(a.high_bid);
    buf.put_u64(a.high_bidder);
    buf.put_u64(a.bid_count);
    buf.put_u64(a.reserve);
    buf.put_u64(a.min_increment);
    buf.put_u64(a.ends_at_ms);
}

/// Writes a `SALE` frame.
pub fn encode_sale(buf: &mut BytesMut, request_id: u32, s: &SaleInfo) {
    header(buf, msg_type::SALE, 0, 45, request_id);
    buf.put_u64(s.sku_id);
    buf.put_u8(s.state as u8);
    buf.put_u64(s.stock);
    buf.put_u64(s.sold);
    buf.put_u32(s.per_buyer_limit);
    buf.put_u64(s.starts_at_ms);
    buf.put_u64(s.ends_at_ms);
}

/// Writes a `PONG` frame echoing `payload`.
pub fn encode_pong(buf: &mut BytesMut, request_id: u32, payload: &[u8]) {
    header(buf, msg_type::PONG, 0, payload.len(), request_id);
    buf.put_slice(payload);
}

impl Request {
    /// The header type code of this request.
    pub fn msg_type(&self) -> u8 {
        match self {
            Request::Hello { .. } => msg_type::HELLO,
            Request::Ping(_) => msg_type::PING,
            Request::OpenAuction(_) => msg_type::OPEN_AUCTION,
            Request::Bid(_) => msg_type::BID,
            Request::CloseAuction { .. } => msg_type::CLOSE_AUCTION,
            Request::GetAuction { .. } => msg_type::GET_AUCTION,
            Request::OpenSale(_) => msg_type::OPEN_SALE,
            Request::Buy(_) => msg_type::BUY,
            Request::GetSale { .. } => msg_type::GET_SALE,
            Request::Subscribe { .. } => msg_type::SUBSCRIBE,
            Request::Unsubscribe { .. } => msg_type::UNSUBSCRIBE,
        }
    }

    /// Payload length of this request on the wire.
    pub fn payload_len(&self) -> usize {
        match self {
            Request::Hello { token, .. } => 3 + token.len(),
            Request::Ping(p) => p.len(),
            Request::OpenAuction(_) | Request::Bid(_) => 32,
            Request::OpenSale(_) => 36,
            Request::Buy(_) => 28,
            Request::CloseAuction { .. }
            | Request::GetAuction { .. }
            | Request::GetSale { .. }
            | Request::Subscribe { .. }
            | Request::Unsubscribe { .. } => 8,
        }
    }

    /// Appends the whole frame (header + payload) to `buf`.
    ///
    /// # Panics
    /// If a `PING` payload exceeds 65535 bytes or a `HELLO` token 255 bytes:
    /// such a frame cannot be expressed on the wire.
    pub fn encode(&self, request_id: u32, flags: u8, buf: &mut BytesMut) {
        let len = self.payload_len();
        assert!(len <= u16::MAX as usize, "payload too long for a frame");
        header(buf, self.msg_type(), flags, len, request_id);
        match self {
            Request::Hello { version, token } => {
                assert!(token.len() <= u8::MAX as usize, "HELLO token too long");
                buf.put_u16(*version);
                buf.put_u8(token.len() as u8);
                buf.put_slice(token);
            }
            Request::Ping(p) => buf.put_slice(p),
            Request::OpenAuction(o) => {
                buf.put_u64(o.auction_id);
                buf.put_u64(o.reserve);
                buf.put_u64(o.min_increment);
                buf.put_u64(o.ends_at_ms);
            }
            Request::Bid(b) => {
                buf.put_u64(b.auction_id);
                buf.put_u64(b.bidder_id);
                buf.put_u64(b.amount);
                buf.put_u64(b.bid_id);
            }
            Request::OpenSale(s) => {
                buf.put_u64(s.sku_id);
                buf.put_u64(s.stock);
                buf.put_u32(s.per_buyer_limit);
                buf.put_u64(s.starts_at_ms);
                buf.put_u64(s.ends_at_ms);
            }
            Request::Buy(b) => {
                buf.put_u64(b.sku_id);
                buf.put_u64(b.buyer_id);
                buf.put_u32(b.quantity);
                buf.put_u64(b.order_id);
            }
            Request::CloseAuction { auction_id }
            | Request::GetAuction { auction_id }
            | Request::Subscribe { auction_id }
            | Request::Unsubscribe { auction_id } => buf.put_u64(*auction_id),
            Request::GetSale { sku_id } => buf.put_u64(*sku_id),
        }
    }
}

impl Response {
    pub fn msg_type(&self) -> u8 {
        match self {
            Response::Welcome { .. } => msg_type::WELCOME,
            Response::Pong(_) => msg_type::PONG,
            Response::Result(_) => msg_type::RESULT,
            Response::Auction(_) => msg_type::AUCTION,
            Response::Sale(_) => msg_type::SALE,
            Response::Error { .. } => msg_type::ERROR,
        }
    }

    /// Appends the whole frame to `buf`.
    pub fn encode(&self, request_id: u32, flags: u8, buf: &mut BytesMut) {
        let start = buf.len();
        match self {
            Response::Welcome {
                version,
                node_id,
                shards,
                max_payload,
            } => {
                header(buf, msg_type::WELCOME, flags, 8, request_id);
                buf.put_u16(*version);
                buf.put_u16(*node_id);
                buf.put_u16(*shards);
                buf.put_u16(*max_payload);
            }
            Response::Pong(p) => encode_pong(buf, request_id, p),
            Response::Result(r) => encode_result(buf, request_id, flags, r),
            Response::Auction(a) => encode_auction(buf, request_id, a),
            Response::Sale(s) => encode_sale(buf, request_id, s),
            Response::Error { code, message } => encode_error(buf, request_id, *code, message),
        }
        // The low-level encoders of replies other than RESULT write flags 0.
        buf[start + 1] = flags;
    }
}

impl Push {
    pub fn msg_type(&self) -> u8 {
        match self {
            Push::BidUpdate { .. } => msg_type::BID_UPDATE,
            Push::AuctionClosed { .. } => msg_type::AUCTION_CLOSED,
        }
    }

    pub fn auction_id(&self) -> u64 {
        match *self {
            Push::BidUpdate { auction_id, .. } | Push::AuctionClosed { auction_id, .. } => {
                auction_id
            }
        }
    }

    /// Appends the whole frame (request_id 0) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match *self {
            Push::BidUpdate {
                auction_id,
                high_bid,
                high_bidder,
                bid_count,
            } => {
                header(buf, msg_type::BID_UPDATE, 0, 32, 0);
                buf.put_u64(auction_id);
                buf.put_u64(high_bid);
                buf.put_u64(high_bidder);
                buf.put_u64(bid_count);
            }
            Push::AuctionClosed {
                auction_id,
                winning_bid,
                winner,
            } => {
                header(buf, msg_type::AUCTION_CLOSED, 0, 24, 0);
                buf.put_u64(auction_id);
                buf.put_u64(winning_bid);
                buf.put_u64(winner);
            }
        }
    }
}

impl ServerMessage {
    pub fn encode(&self, request_id: u32, flags: u8, buf: &mut BytesMut) {
        match self {
            ServerMessage::Response(r) => r.encode(request_id, flags, buf),
            ServerMessage::Push(p) => p.encode(buf),
        }
    }
}

impl Frame<Request> {
    pub fn encode(&self, buf: &mut BytesMut) {
        self.body.encode(self.request_id, self.flags, buf)
    }
}

impl Frame<Response> {
    pub fn encode(&self, buf: &mut BytesMut) {
        self.body.encode(self.request_id, self.flags, buf)
    }
}

impl Frame<ServerMessage> {
    pub fn encode(&self, buf: &mut BytesMut) {
        self.body.encode(self.request_id, self.flags, buf)
    }
}
