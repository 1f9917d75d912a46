//! Feeds arbitrary bytes to both decoders of `gavel-protocol`.
//!
//! Properties checked (a violation panics, which libFuzzer reports as a crash):
//! * neither decoder panics, whatever the bytes;
//! * a decoded request re-encodes to exactly the bytes it consumed;
//! * a decoded server response re-encodes to exactly the bytes it consumed
//!   (pushes: same type and payload; their encoder always writes request_id 0
//!   and flags 0);
//! * consumption follows the contract: `Ok(None)` consumes nothing and only
//!   happens on an incomplete frame, a non-fatal error consumes exactly one
//!   frame, a fatal error (`FRAME_TOO_LARGE`) consumes nothing;
//! * decoding requests from the same bytes delivered in small chunks yields
//!   the same sequence of frames and errors as decoding them in one go.
#![no_main]

use bytes::BytesMut;
use gavel_protocol::{DecodeError, Decoder, Frame, Request, ServerMessage, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const REQUEST_MAX: usize = 1024;
const SERVER_MAX: usize = 65535;

/// The frame length announced by the header at the front of `b`, if complete.
fn announced(b: &[u8]) -> Option<usize> {
    (b.len() >= HEADER_LEN).then(|| HEADER_LEN + u16::from_be_bytes([b[2], b[3]]) as usize)
}

/// Checks how much a decode call consumed; returns the frame's bytes, if any.
fn check_consumption<'a, T>(
    rest: &'a [u8],
    left: usize,
    max: usize,
    res: &Result<Option<T>, DecodeError>,
) -> &'a [u8] {
    let consumed = rest.len() - left;
    match res {
        Ok(None) => {
            assert_eq!(consumed, 0, "Ok(None) consumed bytes");
            if let Some(n) = announced(rest) {
                assert!(n > rest.len(), "Ok(None) on a complete frame");
                assert!(n - HEADER_LEN <= max, "Ok(None) on an oversized header");
            }
        }
        Err(e) if e.is_fatal() => {
            assert_eq!(consumed, 0, "a fatal error consumed bytes");
            let n = announced(rest).expect("fatal error without a header");
            assert!(
                n - HEADER_LEN > max,
                "FRAME_TOO_LARGE for an acceptable length"
            );
        }
        _ => {
            let n = announced(rest).expect("frame without a header");
            assert_eq!(
                consumed, n,
                "a decoded or rejected frame must consume exactly one frame"
            );
        }
    }
    &rest[..consumed]
}

fn decode_requests(data: &[u8]) -> Vec<Result<Frame<Request>, DecodeError>> {
    let dec = Decoder::new(REQUEST_MAX);
    let mut buf = BytesMut::from(data);
    let mut seen = Vec::new();
    loop {
        let rest = &data[data.len() - buf.len()..];
        let res = dec.decode_request(&mut buf);
        let bytes = check_consumption(rest, buf.len(), REQUEST_MAX, &res);
        match res {
            Ok(None) => break,
            Ok(Some(frame)) => {
                let mut out = BytesMut::new();
                frame.encode(&mut out);
                assert_eq!(
                    &out[..],
                    bytes,
                    "request did not re-encode to its bytes: {frame:?}"
                );
                seen.push(Ok(frame));
            }
            Err(e) => {
                let fatal = e.is_fatal();
                seen.push(Err(e));
                if fatal {
                    break;
                }
            }
        }
    }
    seen
}

/// The same bytes as `decode_requests`, but arriving in small pieces.
fn decode_requests_chunked(data: &[u8]) -> Vec<Result<Frame<Request>, DecodeError>> {
    let dec = Decoder::new(REQUEST_MAX);
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = (1 + (i * 7 + data.len()) % 23).min(data.len() - at);
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        i += 1;
        loop {
            match dec.decode_request(&mut buf) {
                Ok(None) => break,
                Ok(Some(f)) => seen.push(Ok(f)),
                Err(e) => {
                    let fatal = e.is_fatal();
                    seen.push(Err(e));
                    if fatal {
                        return seen;
                    }
                }
            }
        }
    }
    seen
}

fn decode_server(data: &[u8]) {
    let dec = Decoder::new(SERVER_MAX);
    let mut buf = BytesMut::from(data);
    loop {
        let rest = &data[data.len() - buf.len()..];
        let res = dec.decode_server(&mut buf);
        let bytes = check_consumption(rest, buf.len(), SERVER_MAX, &res);
        match res {
            Ok(None) => break,
            Ok(Some(frame)) => {
                let mut out = BytesMut::new();
                frame.encode(&mut out);
                match frame.body {
                    ServerMessage::Response(_) => {
                        assert_eq!(&out[..], bytes, "response did not re-encode: {frame:?}")
                    }
                    ServerMessage::Push(_) => {
                        assert_eq!(out[0], bytes[0]);
                        assert_eq!(&out[2..4], &bytes[2..4]);
                        assert_eq!(
                            &out[HEADER_LEN..],
                            &bytes[HEADER_LEN..],
                            "push payload: {frame:?}"
                        );
                    }
                }
            }
            Err(e) if e.is_fatal() => break,
            Err(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = decode_requests(data);
    let chunked = decode_requests_chunked(data);
    assert_eq!(whole, chunked, "chunked delivery decoded differently");
    decode_server(data);
});
