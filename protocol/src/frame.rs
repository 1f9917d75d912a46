//! The frame header and the numeric constants of wire v1.
//!
//! Every message in both directions is an 8-byte header (`type`, `flags`,
//! `length`, `request_id`, big-endian) followed by `length` payload bytes.

use bytes::{BufMut, BytesMut};

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// The only protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Default maximum payload a server accepts.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024;
/// `flags` bit 0: this response is the stored outcome of an earlier request.
pub const FLAG_REPLAYED: u8 = 0x01;

/// Message type codes, as they appear in the header's first byte.
pub mod msg_type {
    pub const HELLO: u8 = 0x01;
    pub const PING: u8 = 0x02;
    pub const OPEN_AUCTION: u8 = 0x10;
    pub const BID: u8 = 0x11;
    pub const CLOSE_AUCTION: u8 = 0x12;
    pub const GET_AUCTION: u8 = 0x13;
    pub const OPEN_SALE: u8 = 0x20;
    pub const BUY: u8 = 0x21;
    pub const GET_SALE: u8 = 0x22;
    pub const SUBSCRIBE: u8 = 0x30;
    pub const UNSUBSCRIBE: u8 = 0x31;

    pub const WELCOME: u8 = 0x81;
    pub const PONG: u8 = 0x82;
    pub const RESULT: u8 = 0x90;
    pub const AUCTION: u8 = 0x93;
    pub const SALE: u8 = 0xA2;
    pub const ERROR: u8 = 0xBF;
    pub const BID_UPDATE: u8 = 0xC0;
    pub const AUCTION_CLOSED: u8 = 0xC1;

    /// Human-readable name of a type code (both directions), for logs and tools.
    pub fn name(t: u8) -> &'static str {
        match t {
            HELLO => "HELLO",
            PING => "PING",
            OPEN_AUCTION => "OPEN_AUCTION",
            BID => "BID",
            CLOSE_AUCTION => "CLOSE_AUCTION",
            GET_AUCTION => "GET_AUCTION",
            OPEN_SALE => "OPEN_SALE",
            BUY => "BUY",
            GET_SALE => "GET_SALE",
            SUBSCRIBE => "SUBSCRIBE",
            UNSUBSCRIBE => "UNSUBSCRIBE",
            WELCOME => "WELCOME",
            PONG => "PONG",
            RESULT => "RESULT",
            AUCTION => "AUCTION",
            SALE => "SALE",
            ERROR => "ERROR",
            BID_UPDATE => "BID_UPDATE",
            AUCTION_CLOSED => "AUCTION_CLOSED",
            _ => "UNKNOWN",
        }
    }
}

/// The fixed 8-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u8,
    pub flags: u8,
    pub length: u16,
    pub request_id: u32,
}

impl Header {
    /// Reads a header from the first 8 bytes of `b`; `None` if fewer are there.
    #[inline]
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN {
            return None;
        }
        Some(Header {
            msg_type: b[0],
            flags: b[1],
            length: u16::from_be_bytes([b[2], b[3]]),
            request_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }

    #[inline]
    pub fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(self.msg_type);
        buf.put_u8(self.flags);
        buf.put_u16(self.length);
        buf.put_u32(self.request_id);
    }
}

/// A decoded or to-be-encoded message with its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T> {
    pub request_id: u32,
    pub flags: u8,
    pub body: T,
}

impl<T> Frame<T> {
    pub fn new(request_id: u32, body: T) -> Self {
        Frame {
            request_id,
            flags: 0,
            body,
        }
    }

    /// True when the `REPLAYED` flag is set.
    pub fn replayed(&self) -> bool {
        self.flags & FLAG_REPLAYED != 0
    }
}
