//! Incremental, zero-copy frame decoder.
//!
//! The decoder reads frames from the front of a [`BytesMut`] that the caller
//! keeps filling from a socket. It returns `Ok(None)` while a frame is
//! incomplete and consumes exactly one frame per successful call. Fixed-layout
//! payloads are parsed in place (no allocation); variable payloads (`PING`,
//! `HELLO` token, `PONG`) are split off as [`Bytes`] sharing the read buffer.
//!
//! Errors are values: a malformed or unknown frame is consumed and reported so
//! the caller can answer it and carry on; an oversized header is reported
//! without consuming anything because the stream can no longer be framed.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::frame::{msg_type, Frame, Header, DEFAULT_MAX_PAYLOAD, HEADER_LEN};
use crate::message::{
    AuctionInfo, AuctionState, BidRequest, BuyRequest, ErrorCode, OpenAuctionRequest,
    OpenSaleRequest, Push, Request, Response, ResultPayload, SaleInfo, ServerMessage, Status,
};

/// Decodes frames from a growing buffer. Cheap to copy; holds only limits.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_payload: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_PAYLOAD)
    }
}

#[inline]
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// What to do with the payload once its type is known.
enum Body<T> {
    /// Parsed in place; the caller drops the frame's bytes.
    Fixed(T),
    /// Needs the payload as `Bytes`; the closure builds the message from it.
    Shared(fn(Bytes) -> Result<T, &'static str>),
}

impl Decoder {
    /// A decoder that refuses payloads longer than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Decoder {
            max_payload: max_payload.min(u16::MAX as usize),
        }
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Returns the header of the frame at the front of `buf`, if complete,
    /// without consuming anything.
    pub fn peek_header(buf: &[u8]) -> Option<Header> {
        Header::parse(buf)
    }

    /// Decodes one client request from the front of `buf`.
    pub fn decode_request(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<Request>>, DecodeError> {
        self.decode_with(buf, request_body)
    }

    /// Decodes one server message (response or push) from the front of `buf`.
    pub fn decode_server(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<ServerMessage>>, DecodeError> {
        self.decode_with(buf, server_body)
    }

    #[inline]
    fn decode_with<T>(
        &self,
        buf: &mut BytesMut,
        body: fn(u8, &[u8]) -> Result<Body<T>, BodyError>,
    ) -> Result<Option<Frame<T>>, DecodeError> {
        let Some(h) = Header::parse(buf) else {
            return Ok(None);
        };
        let len = h.length as usize;
        if len > self.max_payload {
            return Err(DecodeError::TooLarge {
                request_id: h.request_id,
                length: len,
                max: self.max_payload,
            });
        }
        let total = HEADER_LEN + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let parsed = body(h.msg_type, &buf[HEADER_LEN..total]);
        let frame = |body| Frame {
            request_id: h.request_id,
            flags: h.flags,
            body,
        };
        match parsed {
            Ok(Body::Fixed(msg)) => {
                buf.advance(total);
                Ok(Some(frame(msg)))
            }
            Ok(Body::Shared(build)) => {
                buf.advance(HEADER_LEN);
                let payload = buf.split_to(len).freeze();
                match build(payload) {
                    Ok(msg) => Ok(Some(frame(msg))),
                    Err(reason) => Err(DecodeError::Malformed {
                        request_id: h.request_id,
                        name: msg_type::name(h.msg_type),
                        reason,
                    }),
                }
            }
            Err(e) => {
                buf.advance(total);
                Err(match e {
                    BodyError::Unknown => DecodeError::UnknownType {
                        request_id: h.request_id,
                        msg_type: h.msg_type,
                    },
                    BodyError::Malformed(reason) => DecodeError::Malformed {
                        request_id: h.request_id,
                        name: msg_type::name(h.msg_type),
                        reason,
                    },
                })
            }
        }
    }
}

enum BodyError {
    Unknown,
    Malformed(&'static str),
}

#[inline]
fn exact(p: &[u8], n: usize) -> Result<(), BodyError> {
    if p.len() == n {
        Ok(())
    } else {
        Err(BodyError::Malformed("wrong payload length"))
    }
}

#[inline]
fn nonzero_key(k: u64) -> Result<u64, BodyError> {
    if k == 0 {
        Err(BodyError::Malformed("idempotency key must be non-zero"))
    } else {
        Ok(k)
    }
}

fn hello(payload: Bytes) -> Result<Request, &'static str> {
    if payload.len() < 3 {
        return Err("wrong payload length");
    }
    let version = be16(&payload, 0);
    let token_len = payload[2] as usize;
    if payload.len() != 3 + token_len {
        return Err("token_len does not match payload length");
    }
    Ok(Request::Hello {
        version,
        token: payload.slice(3..),
    })
}

fn request_body(t: u8, p: &[u8]) -> Result<Body<Request>, BodyError> {
    use Request as R;
    let id8 = |p: &[u8]| -> Result<u64, BodyError> {
        exact(p, 8)?;
        Ok(be64(p, 0))
    };
    Ok(Body::Fixed(match t {
        msg_type::HELLO => return Ok(Body::Shared(hello)),
        msg_type::PING => return Ok(Body::Shared(|b| Ok(R::Ping(b)))),
        msg_type::OPEN_AUCTION => {
            exact(p, 32)?;
            R::OpenAuction(OpenAuctionRequest {
                auction_id: be64(p, 0),
                reserve: be64(p, 8),
                min_increment: be64(p, 16),
                ends_at_ms: be64(p, 24),
            })
        }
        msg_type::BID => {
            exact(p, 32)?;
            R::Bid(BidRequest {
                auction_id: be64(p, 0),
                bidder_id: be64(p, 8),
                amount: be64(p, 16),
                bid_id: nonzero_key(be64(p, 24))?,
            })
        }
        msg_type::CLOSE_AUCTION => R::CloseAuction {
            auction_id: id8(p)?,
        },
        msg_type::GET_AUCTION => R::GetAuction {
            auction_id: id8(p)?,
        },
        msg_type::OPEN_SALE => {
            exact(p, 36)?;
            R::OpenSale(OpenSaleRequest {
                sku_id: be64(p, 0),
                stock: be64(p, 8),
                per_buyer_limit: be32(p, 16),
                starts_at_ms: be64(p, 20),
                ends_at_ms: be64(p, 28),
            })
        }
        msg_type::BUY => {
            exact(p, 28)?;
            R::Buy(BuyRequest {
                sku_id: be64(p, 0),
                buyer_id: be64(p, 8),
                quantity: be32(p, 16),
                order_id: nonzero_key(be64(p, 20))?,
            })
        }
        msg_type::GET_SALE => R::GetSale { sku_id: id8(p)? },
        msg_type::SUBSCRIBE => R::Subscribe {
            auction_id: id8(p)?,
        },
        msg_type::UNSUBSCRIBE => R::Unsubscribe {
            auction_id: id8(p)?,
        },
        _ => return Err(BodyError::Unknown),
    }))
}

fn state(v: u8) -> Result<AuctionState, BodyError> {
    AuctionState::from_u8(v).ok_or(BodyError::Malformed("unknown state"))
}

fn server_body(t: u8, p: &[u8]) -> Result<Body<ServerMessage>, BodyError> {
    use ServerMessage::{Push as P, Response as Rs};
    Ok(Body::Fixed(match t {
        msg_type::WELCOME => {
            exact(p, 8)?;
            Rs(Response::Welcome {
                version: be16(p, 0),
                node_id: be16(p, 2),
                shards: be16(p, 4),
                max_payload: be16(p, 6),
            })
        }
        msg_type::PONG => return Ok(Body::Shared(|b| Ok(Rs(Response::Pong(b))))),
        msg_type::RESULT => {
            exact(p, 17)?;
            Rs(Response::Result(ResultPayload {
                status: Status::from_u8(p[0]).ok_or(BodyError::Malformed("unknown status"))?,
                value: be64(p, 1),
                aux: be64(p, 9),
            }))
        }
        msg_type::AUCTION => {
            exact(p, 57)?;
            Rs(Response::Auction(AuctionInfo {
                auction_id: be64(p, 0),
                state: state(p[8])?,
                high_bid: be64(p, 9),
                high_bidder: be64(p, 17),
                bid_count: be64(p, 25),
                reserve: be64(p, 33),
                min_increment: be64(p, 41),
                ends_at_ms: be64(p, 49),
            }))
        }
        msg_type::SALE => {
            exact(p, 45)?;
            Rs(Response::Sale(SaleInfo {
                sku_id: be64(p, 0),
                state: state(p[8])?,
                stock: be64(p, 9),
                sold: be64(p, 17),
                per_buyer_limit: be32(p, 25),
                starts_at_ms: be64(p, 29),
                ends_at_ms: be64(p, 37),
            }))
        }
        msg_type::ERROR => {
            if p.len() < 4 {
                return Err(BodyError::Malformed("wrong payload length"));
            }
            let code = ErrorCode::from_u16(be16(p, 0))
                .ok_or(BodyError::Malformed("unknown error code"))?;
            let n = be16(p, 2) as usize;
            if p.len() != 4 + n {
                return Err(BodyError::Malformed(
                    "msg_len does not match payload length",
                ));
            }
            let message = std::str::from_utf8(&p[4..])
                .map_err(|_| BodyError::Malformed("message is not UTF-8"))?
                .to_owned();
            Rs(Response::Error { code, message })
        }
        msg_type::BID_UPDATE => {
            exact(p, 32)?;
            P(Push::BidUpdate {
                auction_id: be64(p, 0),
                high_bid: be64(p, 8),
                high_bidder: be64(p, 16),
                bid_count: be64(p, 24),
            })
        }
        msg_type::AUCTION_CLOSED => {
            exact(p, 24)?;
            P(Push::AuctionClosed {
                auction_id: be64(p, 0),
                winning_bid: be64(p, 8),
                winner: be64(p, 16),
            })
        }
        _ => return Err(BodyError::Unknown),
    }))
}
