//! The seam between the driver and a server protocol.
//!
//! The driver knows connections, pipelines, timers and accounting; a
//! [`Target`] knows bytes: how to open a session, how to encode one workload
//! [`Op`] tagged for later matching, and how to cut replies out of the read
//! buffer. Replies either carry the tag back ([`Target::tagged_replies`], as
//! Gavel's `request_id` does) or arrive in send order (as a RESP server's do),
//! in which case the driver matches each reply with its oldest outstanding
//! request. Adding a protocol means adding a `Target` and a
//! [`crate::config::TargetKind`] variant; nothing in the driver changes.

use bytes::{Bytes, BytesMut};
use gavel_protocol::{
    Decoder, ErrorCode, Push, Request, Response, ServerMessage, Status, FLAG_REPLAYED,
    PROTOCOL_VERSION,
};

use crate::config::TargetKind;
use crate::workload::Op;

/// Tag of the session-opening request; never given to a workload request.
pub const HANDSHAKE_TAG: u32 = u32::MAX;

/// What one reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyKind {
    /// A business outcome.
    Result {
        status: Status,
        value: u64,
        aux: u64,
        replayed: bool,
    },
    /// The request was not executed.
    Error { code: ErrorCode },
    /// The session is open (answer to the handshake).
    Welcome,
    /// A server-initiated message, not an answer to any request.
    Push,
    /// A reply of a kind the workload never asks for (name for diagnostics).
    Other(&'static str),
}

/// One decoded reply. `tag` is `None` for protocols whose replies carry no
/// tag (match with the oldest outstanding request) and for pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub tag: Option<u32>,
    pub kind: ReplyKind,
}

/// The byte stream from the server can no longer be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// A server protocol, one instance per connection.
pub trait Target: Send {
    /// Appends the session opening (e.g. an authenticating HELLO) to `out`.
    /// Returns true when a request was written; the driver then waits for its
    /// reply (tagged [`HANDSHAKE_TAG`]) before sending any workload request.
    fn handshake(&mut self, out: &mut BytesMut) -> bool;

    /// Appends one request for `op`, tagged `tag`, to `out`.
    fn encode(&mut self, tag: u32, op: &Op, out: &mut BytesMut);

    /// Cuts the next complete reply off the front of `buf`; `Ok(None)` until
    /// one is complete.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError>;

    /// Whether replies carry their request's tag (else they come in order).
    fn tagged_replies(&self) -> bool;

    /// Whether the server drops replies it has not sent yet once it reads
    /// our half-close (Redis does). The driver then half-closes only after
    /// every outstanding reply has arrived.
    fn replies_lost_on_half_close(&self) -> bool {
        false
    }
}

/// Builds the target of one connection. `auth_token` is the session
/// credential: HELLO's token for Gavel, the `AUTH` password for Redis.
pub fn new_target(kind: TargetKind, auth_token: Option<&[u8]>) -> Box<dyn Target> {
    match kind {
        TargetKind::Gavel => Box::new(GavelTarget::new(auth_token)),
        TargetKind::Redis => Box::new(crate::target_redis::RedisTarget::new(auth_token)),
    }
}

/// Gavel wire v1: the tag is the frame's `request_id`.
#[derive(Debug, Clone)]
pub struct GavelTarget {
    decoder: Decoder,
    hello: Option<Bytes>,
}

impl GavelTarget {
    pub fn new(auth_token: Option<&[u8]>) -> GavelTarget {
        GavelTarget {
            // Accept anything the wire can express from the server.
            decoder: Decoder::new(u16::MAX as usize),
            hello: auth_token.map(Bytes::copy_from_slice),
        }
    }
}

impl Target for GavelTarget {
    fn handshake(&mut self, out: &mut BytesMut) -> bool {
        match &self.hello {
            Some(token) => {
                Request::Hello {
                    version: PROTOCOL_VERSION,
                    token: token.clone(),
                }
                .encode(HANDSHAKE_TAG, 0, out);
                true
            }
            None => false,
        }
    }

    #[inline]
    fn encode(&mut self, tag: u32, op: &Op, out: &mut BytesMut) {
        let req = match *op {
            Op::Bid { req, .. } => Request::Bid(req),
            Op::Buy { req, .. } => Request::Buy(req),
        };
        req.encode(tag, 0, out);
    }

    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError> {
        let frame = match self.decoder.decode_server(buf) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(ProtocolError(format!("undecodable frame from server: {e}"))),
        };
        let tag = Some(frame.request_id);
        let kind = match frame.body {
            ServerMessage::Push(Push::BidUpdate { .. } | Push::AuctionClosed { .. }) => {
                return Ok(Some(Reply {
                    tag: None,
                    kind: ReplyKind::Push,
                }))
            }
            ServerMessage::Response(r) => match r {
                Response::Result(r) => ReplyKind::Result {
                    status: r.status,
                    value: r.value,
                    aux: r.aux,
                    replayed: frame.flags & FLAG_REPLAYED != 0,
                },
                Response::Error { code, .. } => ReplyKind::Error { code },
                Response::Welcome { .. } => ReplyKind::Welcome,
                Response::Pong(_) => ReplyKind::Other("PONG"),
                Response::Auction(_) => ReplyKind::Other("AUCTION"),
                Response::Sale(_) => ReplyKind::Other("SALE"),
            },
        };
        Ok(Some(Reply { tag, kind }))
    }

    fn tagged_replies(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_protocol::message::{encode_error, encode_result};
    use gavel_protocol::{BidRequest, Frame, ResultPayload};

    #[test]
    fn encodes_bids_and_decodes_replies() {
        let mut t = GavelTarget::new(Some(b"tok"));
        let mut out = BytesMut::new();
        assert!(t.handshake(&mut out));
        let op = Op::Bid {
            index: 0,
            req: BidRequest {
                auction_id: 9,
                bidder_id: 1,
                amount: 5,
                bid_id: 3,
            },
        };
        t.encode(42, &op, &mut out);
        let d = Decoder::default();
        let hello = d.decode_request(&mut out).unwrap().unwrap();
        assert_eq!(hello.request_id, HANDSHAKE_TAG);
        let bid = d.decode_request(&mut out).unwrap().unwrap();
        assert_eq!(
            bid,
            Frame::new(
                42,
                Request::Bid(match op {
                    Op::Bid { req, .. } => req,
                    _ => unreachable!(),
                })
            )
        );

        let mut inb = BytesMut::new();
        encode_result(
            &mut inb,
            42,
            FLAG_REPLAYED,
            &ResultPayload::new(Status::Outbid, 7, 2),
        );
        encode_error(&mut inb, 43, ErrorCode::Busy, "busy");
        Push::BidUpdate {
            auction_id: 9,
            high_bid: 7,
            high_bidder: 2,
            bid_count: 1,
        }
        .encode(&mut inb);
        let r = t.decode(&mut inb).unwrap().unwrap();
        assert_eq!(r.tag, Some(42));
        assert_eq!(
            r.kind,
            ReplyKind::Result {
                status: Status::Outbid,
                value: 7,
                aux: 2,
                replayed: true
            }
        );
        let r = t.decode(&mut inb).unwrap().unwrap();
        assert_eq!(
            (r.tag, r.kind),
            (
                Some(43),
                ReplyKind::Error {
                    code: ErrorCode::Busy
                }
            )
        );
        let r = t.decode(&mut inb).unwrap().unwrap();
        assert_eq!((r.tag, r.kind), (None, ReplyKind::Push));
        assert_eq!(t.decode(&mut inb).unwrap(), None);

        inb.extend_from_slice(&[0x90, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0]);
        assert!(t.decode(&mut inb).is_err());
    }

    #[test]
    fn no_token_no_handshake() {
        let mut out = BytesMut::new();
        assert!(!GavelTarget::new(None).handshake(&mut out));
        assert!(out.is_empty());
    }
}
