//! Session rules: HELLO, authentication, PING, protocol errors and whether
//! the connection survives them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use common::{raw_frame, Server};
use gavel_protocol::{
    ClientError, Decoder, ErrorCode, Frame, Response, ServerMessage, PROTOCOL_VERSION,
};

/// Reads frames until EOF; returns them.
fn read_until_eof(s: &mut TcpStream) -> Vec<Frame<ServerMessage>> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = BytesMut::new();
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    let d = Decoder::new(65535);
    let mut out = Vec::new();
    while let Some(f) = d.decode_server(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "trailing bytes");
    out
}

fn error_code(f: &Frame<ServerMessage>) -> ErrorCode {
    match &f.body {
        ServerMessage::Response(Response::Error { code, .. }) => *code,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[test]
fn hello_and_ping_without_auth() {
    let s = Server::start(&["--shards", "3", "--node-id", "7"]);
    let mut c = s.client();
    let w = c.hello(b"anything").unwrap();
    assert_eq!(
        (w.version, w.node_id, w.shards, w.max_payload),
        (PROTOCOL_VERSION, 7, 3, 1024)
    );
    assert_eq!(&c.ping(b"hello there").unwrap()[..], b"hello there");
    assert_eq!(&c.ping(b"").unwrap()[..], b"");
    // HELLO is optional without auth.
    let mut d = s.client();
    assert_eq!(&d.ping(&[0u8; 1024]).unwrap()[..], &[0u8; 1024][..]);
}

#[test]
fn auth_required_rejects_and_closes() {
    let s = Server::start(&["--auth-token", "sekrit"]);
    // No HELLO first.
    let mut t = TcpStream::connect(s.addr).unwrap();
    t.write_all(&raw_frame(0x02, 5, b"hi")).unwrap();
    let frames = read_until_eof(&mut t);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].request_id, error_code(&frames[0])),
        (5, ErrorCode::Unauthorized)
    );
    // Bad token.
    let mut c = s.client();
    match c.hello(b"wrong") {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Unauthorized),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.ping(b"x"),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    // Good token.
    let mut ok = s.client();
    ok.hello(b"sekrit").unwrap();
    assert_eq!(&ok.ping(b"x").unwrap()[..], b"x");
}

#[test]
fn unsupported_version_closes() {
    let s = Server::start(&[]);
    let mut t = TcpStream::connect(s.addr).unwrap();
    t.write_all(&raw_frame(0x01, 3, &[0, 2, 0])).unwrap();
    let frames = read_until_eof(&mut t);
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::UnsupportedVersion);
}

#[test]
fn malformed_and_unknown_keep_the_connection_open() {
    let s = Server::start(&[]);
    let mut t = TcpStream::connect(s.addr).unwrap();
    let mut bytes = Vec::new();
    bytes.extend(raw_frame(0x11, 1, &[0u8; 31])); // BID one byte short
    bytes.extend(raw_frame(0x7e, 2, b"??")); // unknown type
    let mut zero_key_bid = vec![0u8; 32];
    zero_key_bid[7] = 1;
    bytes.extend(raw_frame(0x11, 3, &zero_key_bid)); // bid_id 0
    bytes.extend(raw_frame(0x01, 4, &[0, 1, 9])); // HELLO token_len lies
    bytes.extend(raw_frame(0x02, 5, b"still here"));
    t.write_all(&bytes).unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = read_until_eof(&mut t);
    assert_eq!(frames.len(), 5);
    let got: Vec<_> = frames[..4]
        .iter()
        .map(|f| (f.request_id, error_code(f)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, ErrorCode::Malformed),
            (2, ErrorCode::UnknownType),
            (3, ErrorCode::Malformed),
            (4, ErrorCode::Malformed)
        ]
    );
    assert_eq!(frames[4].request_id, 5);
    assert!(
        matches!(&frames[4].body, ServerMessage::Response(Response::Pong(p)) if &p[..] == b"still here")
    );
}

#[test]
fn oversized_header_gets_frame_too_large_then_close() {
    let s = Server::start(&["--max-payload", "64"]);
    let mut t = TcpStream::connect(s.addr).unwrap();
    let mut bytes = raw_frame(0x02, 1, b"ok");
    bytes.extend_from_slice(&[0x02, 0, 0, 65, 0, 0, 0, 2]);
    t.write_all(&bytes).unwrap();
    let frames = read_until_eof(&mut t);
    assert_eq!(frames.len(), 2);
    assert_eq!(
        (frames[1].request_id, error_code(&frames[1])),
        (2, ErrorCode::FrameTooLarge)
    );
    // The server is still fine.
    let mut c = s.client();
    assert_eq!(&c.ping(b"y").unwrap()[..], b"y");
}

#[test]
fn fatal_error_waits_for_earlier_replies() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    let mut t = TcpStream::connect(s.addr).unwrap();
    let mut bytes = Vec::new();
    for i in 0..100u32 {
        let mut p = Vec::new();
        for v in [1u64, 9, 10 + i as u64, 1000 + i as u64] {
            p.extend_from_slice(&v.to_be_bytes());
        }
        bytes.extend(raw_frame(0x11, i + 1, &p));
    }
    bytes.extend_from_slice(&[0x02, 0, 0xff, 0xff, 0, 0, 0x03, 0xe7]);
    t.write_all(&bytes).unwrap();
    let frames = read_until_eof(&mut t);
    assert_eq!(
        frames.len(),
        101,
        "every earlier request is answered before the close"
    );
    assert_eq!(error_code(&frames[100]), ErrorCode::FrameTooLarge);
}

#[test]
fn max_connections_refuses_with_busy() {
    let s = Server::start(&["--max-connections", "2"]);
    let mut a = s.client();
    let mut b = s.client();
    assert_eq!(&a.ping(b"a").unwrap()[..], b"a");
    assert_eq!(&b.ping(b"b").unwrap()[..], b"b");
    let mut t = TcpStream::connect(s.addr).unwrap();
    let frames = read_until_eof(&mut t);
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::Busy);
    drop(a);
    // A slot frees up once the server has seen the close.
    let mut ok = false;
    for _ in 0..200 {
        let mut c = s.client();
        if c.ping(b"c").is_ok() {
            ok = true;
            break;
        }
        std::thread::yield_now();
    }
    assert!(ok, "a connection is accepted again after one closed");
}

#[test]
fn help_explains_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gavel-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--backlog",
        "--shards",
        "--auth-token",
        "--idle-timeout",
        "GAVEL_LISTEN",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bad_flags_fail_clearly() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gavel-server"))
        .args(["--idle-timeout", "5 years"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}
