//! Sans-IO RESP2 for the pipelined hot path: a bid's or a purchase's
//! `EVALSHA` encoded straight into the caller's buffer (no `Cmd`, no
//! per-argument `String`), and replies parsed from a byte buffer.
//!
//! The encoding is byte for byte what [`scripts::command`] builds (tests
//! check it); other operations are rare and go through it. The parser reads
//! what the scripts and `HMGET` return — integers, bulk strings, nil, nested
//! arrays, status and error lines — into [`redis::Value`], so
//! [`scripts::decode`] is shared with the blocking client.

use bytes::BufMut;
use redis::Value;

use crate::scripts::{self, Op, ScriptId, SCRIPTS};

/// Longest bulk string or array accepted (the replies here are tiny).
const MAX_LEN: usize = 64 * 1024 * 1024;
/// Longest header, integer, status or error line accepted.
const MAX_LINE: usize = 64 * 1024;
/// Deepest array nesting accepted (the scripts' replies are flat).
const MAX_DEPTH: usize = 8;

/// Appends the command for `op` to `out`.
pub fn encode<B: BufMut>(
    op: &Op,
    sha: &[String; SCRIPTS],
    now_ms: u64,
    window_ms: u64,
    out: &mut B,
) {
    match *op {
        Op::Bid(b) => {
            out.put_slice(b"*10\r\n$7\r\nEVALSHA\r\n");
            bulk(out, sha[ScriptId::Bid as usize].as_bytes());
            bulk(out, b"1");
            bulk(out, Digits::key(b"gavel:{a:", b.auction_id, b"}").as_ref());
            bulk(out, Digits::dec(b.bidder_id).as_ref());
            bulk(out, Digits::dec(b.amount).as_ref());
            bulk(out, Digits::new().num(b.bid_id).as_ref());
            bulk(out, Digits::dec(now_ms).as_ref());
            bulk(out, Digits::new().num(window_ms).as_ref());
            let mut record = Digits::new();
            record
                .num(b.bidder_id)
                .push(b"|")
                .num(b.amount)
                .push(b"|")
                .num(now_ms);
            bulk(out, record.as_ref());
        }
        Op::Buy(b) => {
            out.put_slice(b"*10\r\n$7\r\nEVALSHA\r\n");
            bulk(out, sha[ScriptId::Buy as usize].as_bytes());
            bulk(out, b"3");
            let key = Digits::key(b"gavel:{s:", b.sku_id, b"}");
            bulk(out, key.as_ref());
            bulk(out, key.clone().push(b":held").as_ref());
            bulk(out, key.clone().push(b":order:").num(b.order_id).as_ref());
            bulk(out, Digits::dec(b.buyer_id).as_ref());
            bulk(out, Digits::dec(u64::from(b.quantity)).as_ref());
            bulk(out, Digits::dec(now_ms).as_ref());
            bulk(out, Digits::new().num(window_ms).as_ref());
        }
        _ => out.put_slice(&scripts::command(op, sha, now_ms, window_ms).get_packed_command()),
    }
}

/// Appends one bulk string.
pub fn bulk<B: BufMut>(out: &mut B, s: &[u8]) {
    out.put_u8(b'$');
    out.put_slice(Digits::new().num(s.len() as u64).as_ref());
    out.put_slice(b"\r\n");
    out.put_slice(s);
    out.put_slice(b"\r\n");
}

/// A short argument built on the stack: the longest is a bid's record,
/// `<20 digits>|<20 digits>|<20 digits>` (62 bytes).
#[derive(Clone)]
struct Digits {
    buf: [u8; 64],
    len: usize,
}

impl Digits {
    fn new() -> Digits {
        Digits {
            buf: [0; 64],
            len: 0,
        }
    }

    fn key(prefix: &[u8], id: u64, suffix: &[u8]) -> Digits {
        let mut d = Digits::new();
        d.push(prefix).num(id).push(suffix);
        d
    }

    /// A u64 as the scripts store it: 20 digits, zero-padded.
    fn dec(v: u64) -> Digits {
        let mut d = Digits::new();
        d.pad(v, 20);
        d
    }

    fn push(&mut self, s: &[u8]) -> &mut Digits {
        self.buf[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
        self
    }

    fn num(&mut self, v: u64) -> &mut Digits {
        let width = v.checked_ilog10().map_or(1, |l| l as usize + 1);
        self.pad(v, width)
    }

    fn pad(&mut self, mut v: u64, width: usize) -> &mut Digits {
        for i in (0..width).rev() {
            self.buf[self.len + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.len += width;
        self
    }
}

impl AsRef<[u8]> for Digits {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Parses one complete reply at the start of `buf`: `Ok(Some((value,
/// bytes used)))`, `Ok(None)` when more bytes are needed, `Err` when the
/// bytes are not RESP2 (the connection cannot be trusted any more).
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, String> {
    // Refuse a bad type byte or an endless line at once, rather than wait
    // (and buffer) for a CRLF that a broken peer may never send.
    match buf.get(pos) {
        None => return Ok(None),
        Some(b':' | b'+' | b'-' | b'$' | b'*') => {}
        Some(other) => return Err(format!("not a RESP2 reply: type byte {other:#04x}")),
    }
    let Some(end) = find_crlf(buf, pos + 1) else {
        if buf.len() - pos > MAX_LINE {
            return Err(format!("RESP line longer than {MAX_LINE} bytes"));
        }
        return Ok(None);
    };
    let next = end + 2;
    let line = &buf[pos + 1..end];
    let v = match buf[pos] {
        b':' => Value::Int(int(line)?),
        b'+' if line == b"OK" => Value::Okay,
        b'+' => Value::SimpleString(String::from_utf8_lossy(line).into_owned()),
        // Errors are rare: let redis-rs classify them (NOSCRIPT, MOVED, ...).
        b'-' => redis::parse_redis_value(&buf[pos..next]).map_err(|e| e.to_string())?,
        b'$' => {
            let n = int(line)?;
            if n < 0 {
                Value::Nil
            } else {
                let n = len(n)?;
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    return Err("bulk string not followed by CRLF".into());
                }
                return Ok(Some((
                    Value::BulkString(buf[next..next + n].to_vec()),
                    next + n + 2,
                )));
            }
        }
        b'*' => {
            let n = int(line)?;
            if n < 0 {
                Value::Nil
            } else {
                if depth >= MAX_DEPTH {
                    return Err("RESP arrays nested too deep".into());
                }
                let n = len(n)?;
                let mut items = Vec::with_capacity(n.min(64));
                let mut at = next;
                for _ in 0..n {
                    if at >= buf.len() {
                        return Ok(None);
                    }
                    match parse_at(buf, at, depth + 1)? {
                        Some((v, used)) => {
                            items.push(v);
                            at = used;
                        }
                        None => return Ok(None),
                    }
                }
                return Ok(Some((Value::Array(items), at)));
            }
        }
        other => return Err(format!("not a RESP2 reply: type byte {other:#04x}")),
    };
    Ok(Some((v, next)))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
    Some(from + rel)
}

fn int(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad RESP integer {:?}", String::from_utf8_lossy(line)))
}

fn len(n: i64) -> Result<usize, String> {
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_LEN)
        .ok_or_else(|| format!("RESP length {n} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_protocol::{BidRequest, BuyRequest, OpenAuctionRequest};

    #[test]
    fn encoding_is_byte_for_byte_the_cmd_one() {
        let sha = scripts::script_shas();
        let ops = [
            Op::Bid(BidRequest {
                auction_id: u64::MAX,
                bidder_id: 7,
                amount: u64::MAX,
                bid_id: u64::MAX,
            }),
            Op::Bid(BidRequest {
                auction_id: 0,
                bidder_id: 0,
                amount: 0,
                bid_id: 0,
            }),
            Op::Buy(BuyRequest {
                sku_id: 42,
                buyer_id: 9,
                quantity: u32::MAX,
                order_id: 1_000_000,
            }),
            Op::OpenAuction(OpenAuctionRequest {
                auction_id: 3,
                reserve: 1,
                min_increment: 2,
                ends_at_ms: 5,
            }),
            Op::GetSale(8),
        ];
        for op in &ops {
            for (now, window) in [(0, 0), (1_700_000_000_000, 86_400_000), (u64::MAX, 1)] {
                let mut out = Vec::new();
                encode(op, &sha, now, window, &mut out);
                let expected = scripts::command(op, &sha, now, window).get_packed_command();
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&expected),
                    "{op:?}"
                );
            }
        }
    }

    #[test]
    fn parses_what_redis_rs_parses_at_every_split() {
        let replies: &[&[u8]] = &[
            b"*5\r\n:0\r\n$20\r\n00000000000000000100\r\n$20\r\n00000000000000000007\r\n:0\r\n$20\r\n00000000000000000001\r\n",
            b"*1\r\n:-1\r\n",
            b"*7\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n",
            b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
            b"-MOVED 3999 127.0.0.1:6381\r\n",
            b"+OK\r\n",
            b"$0\r\n\r\n",
            b"*2\r\n*1\r\n:1\r\n*0\r\n",
            b"*-1\r\n",
        ];
        for r in replies {
            let want = redis::parse_redis_value(r).unwrap();
            assert_eq!(parse(r).unwrap(), Some((want, r.len())), "{r:?}");
            for cut in 0..r.len() {
                assert_eq!(parse(&r[..cut]).unwrap(), None, "{r:?} cut at {cut}");
            }
        }
        // Two replies back to back: the first, and where the second starts.
        let two = b":1\r\n:2\r\n";
        assert_eq!(parse(two).unwrap(), Some((Value::Int(1), 4)));
    }

    #[test]
    fn refuses_what_is_not_resp() {
        for bad in [
            &b"?"[..],
            b"?\r\n",
            b"\x00\x01\x02",
            b":x\r\n",
            b"$3\r\nabcXY",
            b"$99999999999\r\n",
            b"*99999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // A line that never ends is refused once it is too long to be real.
        let mut endless = b"-ERR ".to_vec();
        endless.resize(MAX_LINE + 10, b'x');
        assert!(parse(&endless).is_err());
        assert_eq!(parse(&endless[..100]).unwrap(), None);
    }
}
