//! `gavel-cli decode`: Gavel frames from a hex dump or a packet capture,
//! printed one per line (or as JSON objects), decoded with the protocol
//! crate's own [`Decoder`]: requests with the request decoder, replies and
//! pushes with the server-message decoder.
//!
//! Bad input never panics: each problem is reported on stderr with the
//! offset where it was found, and the exit status is then 1.

use std::io::{Read, Write};
use std::path::Path;

use bytes::BytesMut;
use gavel_protocol::frame::msg_type;
use gavel_protocol::{
    Decoder, Frame, Header, Push, Request, Response, ServerMessage, FLAG_REPLAYED, HEADER_LEN,
};
use serde_json::{json, Map, Value};

use super::args::DecodeAs;
use super::format;
use super::pcap;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Request(Frame<Request>),
    Server(Frame<ServerMessage>),
}

/// A frame and where it was found in its byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub offset: usize,
    /// Header plus payload.
    pub len: usize,
    pub frame: Decoded,
}

/// A stretch of bytes that is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBytes {
    pub offset: usize,
    /// Bytes the problem covers (up to the end of the stream when framing is lost).
    pub len: usize,
    pub reason: String,
}

/// Decodes every frame of `bytes`. `side` picks the decoder; `Auto` picks it
/// per frame from the type code (requests are below 0x80). A malformed frame
/// or unknown type is reported and skipped (its header still frames it); a
/// truncated frame at the end stops decoding.
pub fn decode_stream(bytes: &[u8], side: DecodeAs) -> Vec<Result<Located, BadBytes>> {
    let decoder = Decoder::new(u16::MAX as usize);
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some(h) = Header::parse(rest) else {
            out.push(Err(BadBytes {
                offset: at,
                len: rest.len(),
                reason: format!(
                    "incomplete frame header: {} of {HEADER_LEN} bytes",
                    rest.len()
                ),
            }));
            break;
        };
        let total = HEADER_LEN + h.length as usize;
        if rest.len() < total {
            out.push(Err(BadBytes {
                offset: at,
                len: rest.len(),
                reason: format!(
                    "incomplete {} frame: header announces {} payload bytes, only {} present",
                    type_name(h.msg_type),
                    h.length,
                    rest.len() - HEADER_LEN
                ),
            }));
            break;
        }
        let mut buf = BytesMut::from(&rest[..total]);
        let is_request = match side {
            DecodeAs::Auto => h.msg_type < 0x80,
            DecodeAs::Request => true,
            DecodeAs::Reply => false,
        };
        let decoded = if is_request {
            decoder
                .decode_request(&mut buf)
                .map(|f| f.map(Decoded::Request))
        } else {
            decoder
                .decode_server(&mut buf)
                .map(|f| f.map(Decoded::Server))
        };
        out.push(match decoded {
            Ok(Some(frame)) => Ok(Located {
                offset: at,
                len: total,
                frame,
            }),
            Ok(None) => Err(BadBytes {
                offset: at,
                len: total,
                reason: "incomplete frame".into(),
            }),
            Err(e) => {
                let mut reason = format!(
                    "{e} (type 0x{:02x}, request_id {}, {} payload bytes)",
                    h.msg_type, h.request_id, h.length
                );
                if matches!(e, gavel_protocol::DecodeError::UnknownType { .. }) {
                    if is_request && h.msg_type >= 0x80 {
                        reason.push_str("; that is a reply type, in a request stream");
                    } else if !is_request && h.msg_type < 0x80 {
                        reason.push_str("; that is a request type, in a reply stream");
                    }
                }
                Err(BadBytes {
                    offset: at,
                    len: total,
                    reason,
                })
            }
        });
        at += total;
    }
    out
}

fn type_name(t: u8) -> String {
    match msg_type::name(t) {
        "UNKNOWN" => format!("unknown-type (0x{t:02x})"),
        n => n.to_string(),
    }
}

/// Text payloads quoted, anything else (control bytes, invalid UTF-8) as hex.
fn quoted(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("0x{}", hex(b)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The frame as one line: type, request_id, then the fields as key=value.
pub fn frame_text(f: &Decoded) -> String {
    let (name, rid, flags, fields) = match f {
        Decoded::Request(fr) => (
            msg_type::name(fr.body.msg_type()),
            fr.request_id,
            fr.flags,
            request_fields_text(&fr.body),
        ),
        Decoded::Server(fr) => {
            let (name, fields) = server_fields_text(&fr.body);
            (name, fr.request_id, fr.flags, fields)
        }
    };
    let mut line = format!("{name} request_id={rid}");
    if !fields.is_empty() {
        line.push(' ');
        line.push_str(&fields);
    }
    if flags & !FLAG_REPLAYED != 0 {
        line.push_str(&format!(" flags=0x{flags:02x}"));
    }
    if flags & FLAG_REPLAYED != 0 {
        line.push_str(" (replayed)");
    }
    line
}

fn request_fields_text(r: &Request) -> String {
    match r {
        Request::Hello { version, token } => format!(
            "version={version} token_len={} token={}",
            token.len(),
            quoted(token)
        ),
        Request::Ping(p) => format!("len={} payload={}", p.len(), quoted(p)),
        Request::OpenAuction(o) => format!(
            "auction_id={} reserve={} min_increment={} ends_at_ms={}",
            o.auction_id, o.reserve, o.min_increment, o.ends_at_ms
        ),
        Request::Bid(b) => format!(
            "auction_id={} bidder_id={} amount={} bid_id={}",
            b.auction_id, b.bidder_id, b.amount, b.bid_id
        ),
        Request::CloseAuction { auction_id }
        | Request::GetAuction { auction_id }
        | Request::Subscribe { auction_id }
        | Request::Unsubscribe { auction_id } => format!("auction_id={auction_id}"),
        Request::OpenSale(s) => format!(
            "sku_id={} stock={} per_buyer_limit={} starts_at_ms={} ends_at_ms={}",
            s.sku_id, s.stock, s.per_buyer_limit, s.starts_at_ms, s.ends_at_ms
        ),
        Request::Buy(b) => format!(
            "sku_id={} buyer_id={} quantity={} order_id={}",
            b.sku_id, b.buyer_id, b.quantity, b.order_id
        ),
        Request::GetSale { sku_id } => format!("sku_id={sku_id}"),
    }
}

fn server_fields_text(m: &ServerMessage) -> (&'static str, String) {
    match m {
        ServerMessage::Response(r) => match r {
            Response::Result(r) => (
                "RESULT",
                format!(
                    "status={} value={} aux={}",
                    r.status.name(),
                    r.value,
                    r.aux
                ),
            ),
            Response::Welcome {
                version,
                node_id,
                shards,
                max_payload,
            } => (
                "WELCOME",
                format!(
                    "version={version} node_id={node_id} shards={shards} max_payload={max_payload}"
                ),
            ),
            Response::Pong(p) => ("PONG", format!("len={} payload={}", p.len(), quoted(p))),
            Response::Auction(a) => (
                "AUCTION",
                format!(
                    "auction_id={} state={} high_bid={} high_bidder={} bid_count={} reserve={} min_increment={} ends_at_ms={}",
                    a.auction_id,
                    a.state.name(),
                    a.high_bid,
                    a.high_bidder,
                    a.bid_count,
                    a.reserve,
                    a.min_increment,
                    a.ends_at_ms
                ),
            ),
            Response::Sale(s) => (
                "SALE",
                format!(
                    "sku_id={} state={} stock={} sold={} per_buyer_limit={} starts_at_ms={} ends_at_ms={}",
                    s.sku_id,
                    s.state.name(),
                    s.stock,
                    s.sold,
                    s.per_buyer_limit,
                    s.starts_at_ms,
                    s.ends_at_ms
                ),
            ),
            Response::Error { code, message } => (
                "ERROR",
                format!("code={} message={:?}", code.name(), message),
            ),
        },
        ServerMessage::Push(p) => {
            let name = match p {
                Push::BidUpdate { .. } => "BID_UPDATE",
                Push::AuctionClosed { .. } => "AUCTION_CLOSED",
            };
            let text = format::push_text(p);
            let fields = text.split_once(' ').map(|(_, f)| f).unwrap_or("");
            (name, fields.to_string())
        }
    }
}

/// The frame as a JSON object: `type`, `request_id`, `flags`, `replayed`,
/// then the fields (names as in the contract).
pub fn frame_json(f: &Decoded) -> Map<String, Value> {
    let (rid, flags, body) = match f {
        Decoded::Request(fr) => (fr.request_id, fr.flags, request_json(&fr.body)),
        Decoded::Server(fr) => {
            let v = match &fr.body {
                ServerMessage::Response(r) => {
                    let mut v = format::response_json(&Frame {
                        request_id: fr.request_id,
                        flags: fr.flags,
                        body: r.clone(),
                    });
                    if let (Response::Pong(p), Some(o)) = (r, v.as_object_mut()) {
                        o.insert("payload_hex".into(), hex(p).into());
                    }
                    v
                }
                ServerMessage::Push(p) => format::push_json(p),
            };
            (fr.request_id, fr.flags, v)
        }
    };
    let mut obj = Map::new();
    if let Value::Object(b) = body {
        if let Some(t) = b.get("type") {
            obj.insert("type".into(), t.clone());
        }
        obj.insert("request_id".into(), rid.into());
        obj.insert("flags".into(), flags.into());
        obj.insert("replayed".into(), (flags & FLAG_REPLAYED != 0).into());
        for (k, v) in b {
            obj.entry(k).or_insert(v);
        }
    }
    obj
}

fn request_json(r: &Request) -> Value {
    let name = msg_type::name(r.msg_type());
    match r {
        Request::Hello { version, token } => json!({
            "type": name, "version": version, "token_len": token.len(),
            "token": String::from_utf8_lossy(token), "token_hex": hex(token),
        }),
        Request::Ping(p) => json!({
            "type": name, "len": p.len(), "payload": String::from_utf8_lossy(p),
            "payload_hex": hex(p),
        }),
        Request::OpenAuction(o) => json!({
            "type": name, "auction_id": o.auction_id, "reserve": o.reserve,
            "min_increment": o.min_increment, "ends_at_ms": o.ends_at_ms,
        }),
        Request::Bid(b) => json!({
            "type": name, "auction_id": b.auction_id, "bidder_id": b.bidder_id,
            "amount": b.amount, "bid_id": b.bid_id,
        }),
        Request::CloseAuction { auction_id }
        | Request::GetAuction { auction_id }
        | Request::Subscribe { auction_id }
        | Request::Unsubscribe { auction_id } => json!({"type": name, "auction_id": auction_id}),
        Request::OpenSale(s) => json!({
            "type": name, "sku_id": s.sku_id, "stock": s.stock,
            "per_buyer_limit": s.per_buyer_limit, "starts_at_ms": s.starts_at_ms,
            "ends_at_ms": s.ends_at_ms,
        }),
        Request::Buy(b) => json!({
            "type": name, "sku_id": b.sku_id, "buyer_id": b.buyer_id,
            "quantity": b.quantity, "order_id": b.order_id,
        }),
        Request::GetSale { sku_id } => json!({"type": name, "sku_id": sku_id}),
    }
}

// ---------------------------------------------------------------------------
// Hex input.
// ---------------------------------------------------------------------------

/// Parses a hex dump: pairs of hex digits, with whitespace, `:` `,` `-` `_`
/// separators and `0x` prefixes ignored. Errors name the line and column.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut high: Option<(u8, usize, usize)> = None;
    for (ln, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let col = i + 1;
            if c == '0'
                && high.is_none()
                && matches!(chars.get(i + 1), Some('x' | 'X'))
                && (i == 0 || !chars[i - 1].is_ascii_hexdigit())
            {
                i += 2;
                continue;
            }
            if c.is_whitespace() || matches!(c, ':' | ',' | '-' | '_') {
                if let Some((_, l, cl)) = high {
                    // "a b" is two nibbles split by a separator: refuse.
                    return Err(format!(
                        "line {l}, column {cl}: odd hex digit '{}' (bytes are two digits)",
                        chars.get(cl - 1).copied().unwrap_or(' ')
                    ));
                }
                i += 1;
                continue;
            }
            let Some(v) = c.to_digit(16) else {
                return Err(format!(
                    "line {}, column {col}: {c:?} is not a hex digit",
                    ln + 1
                ));
            };
            match high.take() {
                None => high = Some((v as u8, ln + 1, col)),
                Some((h, _, _)) => out.push(h << 4 | v as u8),
            }
            i += 1;
        }
        if let Some((_, l, cl)) = high {
            return Err(format!(
                "line {l}, column {cl}: odd hex digit at the end of the line (bytes are two digits)"
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The subcommand.
// ---------------------------------------------------------------------------

/// Where `decode` reads from.
pub enum Input<'a> {
    Hex(String),
    HexFile(&'a Path),
    Stdin,
    Pcap(&'a Path, Option<u16>),
}

/// Runs `decode`; returns the exit status (0: everything decoded; 1: bad
/// input, reported on stderr).
pub fn run(input: Input<'_>, side: DecodeAs, json: bool) -> u8 {
    let mut out = std::io::stdout().lock();
    let status = match input {
        Input::Pcap(path, port) => run_pcap(&mut out, path, port, json),
        other => {
            let text = match other {
                Input::Hex(s) => Ok(s),
                Input::HexFile(p) if p.as_os_str() == "-" => read_stdin(),
                Input::HexFile(p) => std::fs::read(p)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|e| format!("cannot read {}: {e}", p.display())),
                _ => read_stdin(),
            };
            match text.and_then(|t| parse_hex(&t)) {
                Err(e) => {
                    eprintln!("gavel-cli decode: {e}");
                    1
                }
                Ok(bytes) if bytes.is_empty() => {
                    eprintln!("gavel-cli decode: no bytes to decode");
                    1
                }
                Ok(bytes) => run_bytes(&mut out, &bytes, side, json),
            }
        }
    };
    let _ = out.flush();
    status
}

fn read_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    Ok(s)
}

fn run_bytes(out: &mut impl Write, bytes: &[u8], side: DecodeAs, json: bool) -> u8 {
    let mut status = 0;
    for item in decode_stream(bytes, side) {
        match item {
            Ok(l) => {
                let _ = if json {
                    let mut o = frame_json(&l.frame);
                    o.insert("offset".into(), l.offset.into());
                    o.insert("frame_len".into(), l.len.into());
                    writeln!(out, "{}", Value::Object(o))
                } else {
                    writeln!(out, "{}", frame_text(&l.frame))
                };
            }
            Err(b) => {
                let _ = out.flush();
                eprintln!(
                    "gavel-cli decode: offset {} ({} bytes): {}",
                    b.offset, b.len, b.reason
                );
                status = 1;
            }
        }
    }
    status
}

/// One line of pcap output, ordered by the packet that completed it.
struct Event {
    packet: usize,
    conn: usize,
    dir: u8,
    offset: usize,
    what: Result<Located, String>,
}

fn run_pcap(out: &mut impl Write, path: &Path, port: Option<u16>, json: bool) -> u8 {
    let file = match std::fs::read(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gavel-cli decode: cannot read {}: {e}", path.display());
            return 1;
        }
    };
    let cap = match pcap::read_capture(&file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gavel-cli decode: {}: {e}", path.display());
            return 1;
        }
    };
    let mut status = 0;
    if let Some(t) = &cap.truncated {
        eprintln!("gavel-cli decode: {}: {t}", path.display());
        status = 1;
    }
    let re = pcap::reassemble(&cap, port);
    for (n, why) in &re.skipped {
        eprintln!("gavel-cli decode: packet {n}: skipped: {why}");
    }
    let mut events = Vec::new();
    for (ci, c) in re.connections.iter().enumerate() {
        for (dir, stream, side) in [
            (0u8, &c.to_server, DecodeAs::Request),
            (1u8, &c.to_client, DecodeAs::Reply),
        ] {
            for item in decode_stream(&stream.bytes, side) {
                let (offset, last, what) = match item {
                    Ok(l) => (l.offset, l.offset + l.len - 1, Ok(l)),
                    Err(b) => (
                        b.offset,
                        b.offset + b.len.max(1) - 1,
                        Err(format!(
                            "offset {} ({} bytes): {}",
                            b.offset, b.len, b.reason
                        )),
                    ),
                };
                events.push(Event {
                    packet: stream.completed_by(offset, last),
                    conn: ci,
                    dir,
                    offset,
                    what,
                });
            }
            if let Some(g) = stream.gap {
                events.push(Event {
                    packet: g.packet,
                    conn: ci,
                    dir,
                    offset: stream.bytes.len(),
                    what: Err(format!(
                        "offset {}: {} bytes missing from the capture before packet {}; \
                         the rest of this direction is not decoded",
                        stream.bytes.len(),
                        g.missing,
                        g.packet
                    )),
                });
            }
        }
    }
    if re.connections.iter().all(|c| {
        c.to_server.bytes.is_empty()
            && c.to_client.bytes.is_empty()
            && c.to_server.gap.is_none()
            && c.to_client.gap.is_none()
    }) {
        match port {
            Some(p) => eprintln!(
                "gavel-cli decode: {}: no TCP payload on port {p}",
                path.display()
            ),
            None => eprintln!("gavel-cli decode: {}: no TCP payload", path.display()),
        }
        return 1;
    }
    events.sort_by_key(|e| (e.packet, e.conn, e.dir, e.offset));
    for e in events {
        let c = &re.connections[e.conn];
        let arrow = if e.dir == 0 { "→" } else { "←" };
        match e.what {
            Ok(l) => {
                let _ = if json {
                    let mut o = frame_json(&l.frame);
                    o.insert("packet".into(), e.packet.into());
                    o.insert(
                        "direction".into(),
                        if e.dir == 0 {
                            "client_to_server"
                        } else {
                            "server_to_client"
                        }
                        .into(),
                    );
                    o.insert("client".into(), c.client.to_string().into());
                    o.insert("server".into(), c.server.to_string().into());
                    o.insert("stream_offset".into(), l.offset.into());
                    o.insert("frame_len".into(), l.len.into());
                    writeln!(out, "{}", Value::Object(o))
                } else {
                    writeln!(
                        out,
                        "#{} {} {arrow} {} {}",
                        e.packet,
                        c.client,
                        c.server,
                        frame_text(&l.frame)
                    )
                };
            }
            Err(msg) => {
                let _ = out.flush();
                eprintln!(
                    "gavel-cli decode: packet {}: {} {arrow} {}: {msg}",
                    e.packet, c.client, c.server
                );
                status = 1;
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_forms() {
        assert_eq!(
            parse_hex("11 00:0x20\n0X01,02").unwrap(),
            [0x11, 0, 0x20, 1, 2]
        );
        assert_eq!(parse_hex("deadBEEF").unwrap(), [0xde, 0xad, 0xbe, 0xef]);
        assert!(parse_hex("1 2").unwrap_err().contains("column 1"));
        assert!(parse_hex("11 zz").unwrap_err().contains("column 4"));
        assert!(parse_hex("abc").unwrap_err().contains("odd"));
    }

    #[test]
    fn error_codes_by_name() {
        // ERROR 11 IN_DOUBT, request_id 9, message "x"; then code 12, unknown.
        let r = decode_stream(
            &[0xbf, 0, 0, 5, 0, 0, 0, 9, 0, 11, 0, 1, b'x'],
            DecodeAs::Auto,
        );
        let l = r[0].as_ref().unwrap();
        assert_eq!(
            frame_text(&l.frame),
            "ERROR request_id=9 code=IN_DOUBT message=\"x\""
        );
        let j = frame_json(&l.frame);
        assert_eq!(
            (&j["code"], &j["code_num"]),
            (&json!("IN_DOUBT"), &json!(11))
        );
        let r = decode_stream(&[0xbf, 0, 0, 4, 0, 0, 0, 9, 0, 12, 0, 0], DecodeAs::Auto);
        let e = r[0].as_ref().unwrap_err();
        assert!(e.reason.contains("unknown error code"), "{}", e.reason);
    }

    #[test]
    fn truncated_and_unknown() {
        let r = decode_stream(&[0x11, 0, 0, 32, 0, 0, 0, 1, 0], DecodeAs::Auto);
        let e = r[0].as_ref().unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.reason.contains("incomplete BID frame"), "{}", e.reason);
        let r = decode_stream(&[0x77, 0, 0, 0, 0, 0, 0, 1, 0x01], DecodeAs::Auto);
        assert!(r[0].as_ref().unwrap_err().reason.contains("unknown"));
        assert!(r[1].as_ref().unwrap_err().reason.contains("1 of 8"));
    }
}
