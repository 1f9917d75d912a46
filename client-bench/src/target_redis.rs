//! `--target redis`: the load sent straight to Redis, one `EVALSHA` of
//! Gavel's Lua scripts (`lua/bid.lua`, `lua/buy.lua`, embedded in the
//! `gavel-redis` crate) per bid or buy — the architecture of a stateless
//! server that does one Lua compare-and-set per request.
//!
//! It runs on the same driver as the Gavel target (same mio sockets,
//! connections, pipelining and accounting), so the two are compared like for
//! like. Commands are encoded by `gavel_redis::resp`, as gavel-server sends
//! them (a test checks them against `gavel_redis::scripts::command`); replies
//! are parsed here, zero-copy, and come in
//! send order ([`Target::tagged_replies`] is false). The scripts are loaded by
//! the setup phase (`SCRIPT LOAD`); their SHA1s are computed locally.
//!
//! Reply mapping: a script's `{status, value, aux, replayed, …}` is a RESULT
//! (with the replayed flag); `{-1}` is ERROR IDEMPOTENCY_CONFLICT; a Redis
//! error (`-NOSCRIPT`, `-BUSY`, `-ERR …`) is ERROR UNAVAILABLE (BUSY for a
//! busy script), i.e. the request was not executed as far as we know.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use gavel_protocol::{ErrorCode, Status};
use gavel_redis::Op as RedisOp;

use crate::target::{ProtocolError, Reply, ReplyKind, Target, HANDSHAKE_TAG};
use crate::workload::Op;

/// Idempotency window passed to the scripts (the server's default, 24 h).
pub const WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Longest bulk string or array accepted from Redis (the replies here are tiny).
const MAX_LEN: i64 = 64 * 1024 * 1024;

fn shas() -> &'static [String; gavel_redis::scripts::SCRIPTS] {
    static SHAS: OnceLock<[String; gavel_redis::scripts::SCRIPTS]> = OnceLock::new();
    SHAS.get_or_init(gavel_redis::script_shas)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RESP over one connection. The tag is not sent: Redis answers in order.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    password: Option<Vec<u8>>,
    /// The next reply answers `AUTH`.
    handshake_pending: bool,
}

impl RedisTarget {
    /// `password`: sent with `AUTH` before any request, if given.
    pub fn new(password: Option<&[u8]>) -> RedisTarget {
        RedisTarget {
            password: password.map(<[u8]>::to_vec),
            handshake_pending: false,
        }
    }

    /// Appends the command for `op` as of `now_ms`: gavel-redis' own
    /// encoding, the one gavel-server sends.
    pub fn encode_at(op: &Op, now_ms: u64, out: &mut BytesMut) {
        let op = match *op {
            Op::Bid { req, .. } => RedisOp::Bid(req),
            Op::Buy { req, .. } => RedisOp::Buy(req),
        };
        gavel_redis::resp::encode(&op, shas(), now_ms, WINDOW_MS, out);
    }
}

impl Target for RedisTarget {
    fn handshake(&mut self, out: &mut BytesMut) -> bool {
        let Some(pw) = &self.password else {
            return false;
        };
        out.put_slice(b"*2\r\n$4\r\nAUTH\r\n");
        gavel_redis::resp::bulk(out, pw);
        self.handshake_pending = true;
        true
    }

    #[inline]
    fn encode(&mut self, _tag: u32, op: &Op, out: &mut BytesMut) {
        RedisTarget::encode_at(op, now_ms(), out);
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError> {
        let Some((v, used)) = parse(buf, 0)? else {
            return Ok(None);
        };
        let reply = if self.handshake_pending {
            self.handshake_pending = false;
            let kind = match v {
                Resp::Simple(..) => ReplyKind::Welcome,
                _ => ReplyKind::Error {
                    code: ErrorCode::Unauthorized,
                },
            };
            Reply {
                tag: Some(HANDSHAKE_TAG),
                kind,
            }
        } else {
            Reply {
                tag: None,
                kind: reply_kind(buf, &v),
            }
        };
        buf.advance(used);
        Ok(Some(reply))
    }

    fn tagged_replies(&self) -> bool {
        false
    }

    fn replies_lost_on_half_close(&self) -> bool {
        // Redis frees a client as soon as it reads EOF, dropping replies it
        // has not written yet.
        true
    }
}

/// What a script's reply means for the driver.
fn reply_kind(buf: &[u8], v: &Resp) -> ReplyKind {
    match v {
        Resp::Array(items) => {
            let int = |i: usize| match items.get(i) {
                Some(Resp::Int(n)) => Some(*n),
                Some(Resp::Bulk(a, b)) => std::str::from_utf8(&buf[*a..*b]).ok()?.parse().ok(),
                _ => None,
            };
            let num = |i: usize| match items.get(i) {
                Some(Resp::Int(n)) => u64::try_from(*n).ok(),
                Some(Resp::Bulk(a, b)) => std::str::from_utf8(&buf[*a..*b]).ok()?.parse().ok(),
                _ => None,
            };
            match int(0) {
                Some(-1) => ReplyKind::Error {
                    code: ErrorCode::IdempotencyConflict,
                },
                Some(code) => {
                    let status = u8::try_from(code).ok().and_then(Status::from_u8);
                    match (status, num(1), num(2), num(3)) {
                        (Some(status), Some(value), Some(aux), Some(r)) => ReplyKind::Result {
                            status,
                            value,
                            aux,
                            replayed: r == 1,
                        },
                        _ => ReplyKind::Other("unexpected script reply"),
                    }
                }
                None => ReplyKind::Other("unexpected script reply"),
            }
        }
        Resp::Error(a, b) => ReplyKind::Error {
            code: if buf[*a..*b].starts_with(b"BUSY") {
                ErrorCode::Busy
            } else {
                ErrorCode::Unavailable
            },
        },
        Resp::Simple(..) => ReplyKind::Other("simple string"),
        Resp::Int(_) => ReplyKind::Other("integer"),
        Resp::Bulk(..) => ReplyKind::Other("bulk string"),
        Resp::Nil => ReplyKind::Other("nil"),
    }
}

/// A parsed RESP value; strings are byte ranges of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Simple(usize, usize),
    Error(usize, usize),
    Int(i64),
    Bulk(usize, usize),
    Nil,
    Array(Vec<Resp>),
}

/// The line starting at `pos` (without CRLF) and the position after it.
fn line(buf: &[u8], pos: usize) -> Option<(usize, usize, usize)> {
    let rel = buf.get(pos..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((pos, pos + rel, pos + rel + 2))
}

fn int_of(buf: &[u8], a: usize, b: usize) -> Result<i64, ProtocolError> {
    std::str::from_utf8(&buf[a..b])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ProtocolError(format!(
                "bad RESP integer {:?}",
                String::from_utf8_lossy(&buf[a..b])
            ))
        })
}

/// Parses one RESP2 value at `pos`: `Ok(None)` until it is complete,
/// else the value and the position after it.
fn parse(buf: &[u8], pos: usize) -> Result<Option<(Resp, usize)>, ProtocolError> {
    let Some(&t) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((a, b, next)) = line(buf, pos + 1) else {
        return Ok(None);
    };
    Ok(Some(match t {
        b'+' => (Resp::Simple(a, b), next),
        b'-' => (Resp::Error(a, b), next),
        b':' => (Resp::Int(int_of(buf, a, b)?), next),
        b'$' => {
            let n = int_of(buf, a, b)?;
            if n < 0 {
                (Resp::Nil, next)
            } else if n > MAX_LEN {
                return Err(ProtocolError(format!("RESP bulk string of {n} bytes")));
            } else {
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError("RESP bulk string without CRLF".into()));
                }
                (Resp::Bulk(next, end), end + 2)
            }
        }
        b'*' => {
            let n = int_of(buf, a, b)?;
            if n < 0 {
                (Resp::Nil, next)
            } else if n > MAX_LEN {
                return Err(ProtocolError(format!("RESP array of {n} elements")));
            } else {
                let mut items = Vec::with_capacity((n as usize).min(8));
                let mut at = next;
                for _ in 0..n {
                    let Some((v, after)) = parse(buf, at)? else {
                        return Ok(None);
                    };
                    items.push(v);
                    at = after;
                }
                (Resp::Array(items), at)
            }
        }
        other => {
            return Err(ProtocolError(format!(
                "not a RESP2 reply: type byte {other:#04x}"
            )))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_protocol::{BidRequest, BuyRequest};
    use gavel_redis::scripts::command;

    #[test]
    fn commands_match_gavel_redis_byte_for_byte() {
        let sha = gavel_redis::script_shas();
        for (bid_id, amount) in [(1u64, 0u64), (u64::MAX, u64::MAX), (77, (1 << 53) + 1)] {
            let req = BidRequest {
                auction_id: 1_763_000_000_000_000_123,
                bidder_id: 42,
                amount,
                bid_id,
            };
            let mut out = BytesMut::new();
            RedisTarget::encode_at(&Op::Bid { index: 0, req }, 1_763_000_000_123, &mut out);
            let want = command(&RedisOp::Bid(req), &sha, 1_763_000_000_123, WINDOW_MS)
                .get_packed_command();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want)
            );
        }
        let req = BuyRequest {
            sku_id: 9,
            buyer_id: u64::MAX,
            quantity: u32::MAX,
            order_id: 12345,
        };
        let mut out = BytesMut::new();
        RedisTarget::encode_at(&Op::Buy { index: 0, req }, 0, &mut out);
        let want = command(&RedisOp::Buy(req), &sha, 0, WINDOW_MS).get_packed_command();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
    }

    fn decode_all(t: &mut RedisTarget, bytes: &[u8]) -> Vec<Reply> {
        // Byte by byte: every prefix must be "not yet complete".
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in bytes {
            buf.put_u8(b);
            while let Some(r) = t.decode(&mut buf).unwrap() {
                out.push(r);
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn decodes_script_replies() {
        let mut t = RedisTarget::new(Some(b"pw"));
        let mut hs = BytesMut::new();
        assert!(t.handshake(&mut hs));
        assert_eq!(&hs[..], b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
        let replies = decode_all(
            &mut t,
            b"+OK\r\n\
              *5\r\n:0\r\n$20\r\n18446744073709551615\r\n$20\r\n00000000000000000007\r\n:0\r\n$20\r\n00000000000000000003\r\n\
              *4\r\n:1\r\n$20\r\n00000000000000001500\r\n$20\r\n00000000000000000002\r\n:1\r\n\
              *1\r\n:-1\r\n\
              -NOSCRIPT No matching script. Please use EVAL.\r\n\
              -BUSY Redis is busy running a script.\r\n\
              :5\r\n\
              $-1\r\n",
        );
        let kinds: Vec<_> = replies.iter().map(|r| r.kind.clone()).collect();
        assert_eq!(replies[0].tag, Some(HANDSHAKE_TAG));
        assert!(replies[1..].iter().all(|r| r.tag.is_none()));
        assert_eq!(
            kinds,
            vec![
                ReplyKind::Welcome,
                ReplyKind::Result {
                    status: Status::Ok,
                    value: u64::MAX,
                    aux: 7,
                    replayed: false
                },
                ReplyKind::Result {
                    status: Status::Outbid,
                    value: 1500,
                    aux: 2,
                    replayed: true
                },
                ReplyKind::Error {
                    code: ErrorCode::IdempotencyConflict
                },
                ReplyKind::Error {
                    code: ErrorCode::Unavailable
                },
                ReplyKind::Error {
                    code: ErrorCode::Busy
                },
                ReplyKind::Other("integer"),
                ReplyKind::Other("nil"),
            ]
        );

        let mut t = RedisTarget::new(Some(b"bad"));
        t.handshake(&mut BytesMut::new());
        let r = decode_all(&mut t, b"-WRONGPASS invalid username-password pair\r\n");
        assert_eq!(
            r[0].kind,
            ReplyKind::Error {
                code: ErrorCode::Unauthorized
            }
        );
        let mut t = RedisTarget::new(None);
        assert!(!t.handshake(&mut BytesMut::new()));
        let mut junk = BytesMut::from(&b"?what\r\n"[..]);
        assert!(t.decode(&mut junk).is_err());
    }
}
