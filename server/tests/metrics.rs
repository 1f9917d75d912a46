//! `--metrics-listen`: counters after known traffic match that traffic, and
//! the health endpoints answer.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Server;
use gavel_protocol::{BidRequest, BuyRequest, Request, Response, Status};

/// Value of one sample line, e.g. `gavel_results_total{status="OK"}`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

#[test]
fn counters_match_known_traffic() {
    let s = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let mut c = s.client();
    assert_eq!(
        c.open_auction(1, 100, 1, 0).unwrap().result.status,
        Status::Ok
    );
    c.open_sale(2, 10, 0, 0, 0).unwrap();
    // 50 accepted, 30 outbid, 3 on an auction that does not exist, 5 malformed buys.
    for i in 1..=50u64 {
        c.send(&Request::Bid(BidRequest {
            auction_id: 1,
            bidder_id: i,
            amount: 100 + i,
            bid_id: i,
        }));
    }
    for i in 51..=80u64 {
        c.send(&Request::Bid(BidRequest {
            auction_id: 1,
            bidder_id: i,
            amount: 69 + i, // 120..=149: above the reserve, below the high bid of 150
            bid_id: i,
        }));
    }
    for i in 1..=3u64 {
        c.send(&Request::Bid(BidRequest {
            auction_id: 3,
            bidder_id: i,
            amount: 500,
            bid_id: i,
        }));
    }
    for i in 1..=5u64 {
        c.send(&Request::Buy(BuyRequest {
            sku_id: 2,
            buyer_id: i,
            quantity: 0,
            order_id: i,
        }));
    }
    c.flush().unwrap();
    let mut statuses = std::collections::HashMap::new();
    for _ in 0..88 {
        let key = match c.recv().unwrap().body {
            Response::Result(r) => r.status.name().to_string(),
            Response::Error { code, .. } => code.name().to_string(),
            other => panic!("{other:?}"),
        };
        *statuses.entry(key).or_insert(0) += 1;
    }
    assert_eq!(statuses["OK"], 50);
    assert_eq!(statuses["OUTBID"], 30);
    assert_eq!(statuses["NOT_FOUND"], 3);
    assert_eq!(statuses["MALFORMED"], 5);

    // Counts are published once per event-loop turn: poll (bounded) until
    // the last one lands, then check every counter exactly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (code, body) = s.http_get("/metrics");
        assert_eq!(code, 200);
        if sample(&body, "gavel_errors_total{code=\"MALFORMED\"}") == Some(5.0)
            && sample(&body, "gavel_results_total{status=\"NOT_FOUND\"}") == Some(3.0)
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never caught up:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let expect = [
        ("gavel_frames_in_total{type=\"bid\"}", 83.0),
        ("gavel_frames_in_total{type=\"buy\"}", 5.0),
        ("gavel_frames_in_total{type=\"open_auction\"}", 1.0),
        ("gavel_results_total{status=\"OK\"}", 52.0), // 50 bids + 2 opens
        ("gavel_results_total{status=\"OUTBID\"}", 30.0),
        ("gavel_results_total{status=\"NOT_FOUND\"}", 3.0),
        ("gavel_errors_total{code=\"MALFORMED\"}", 5.0),
        ("gavel_errors_total{code=\"BUSY\"}", 0.0),
        ("gavel_frames_out_total{type=\"result\"}", 85.0),
        ("gavel_frames_out_total{type=\"error\"}", 5.0),
        ("gavel_request_latency_seconds_count{type=\"bid\"}", 83.0),
        ("gavel_connections_accepted_total", 1.0),
        ("gavel_connections_open", 1.0),
    ];
    for (name, want) in expect {
        assert_eq!(sample(&text, name), Some(want), "{name}\n{text}");
    }
    assert!(
        text.contains("gavel_shard_queue_depth{shard=\"0\"}"),
        "{text}"
    );

    assert_eq!(s.http_get("/healthz").0, 200);
    assert_eq!(s.http_get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(s.http_get("/nope").0, 404);
}

/// The metrics listener must not keep the server alive through shutdown.
#[test]
fn sigterm_exits_zero_with_metrics_enabled() {
    let mut s = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    assert_eq!(s.http_get("/metrics").0, 200);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

/// `GET path` on a new connection whose reads time out after `limit`, so a
/// server that does not answer fails the test instead of hanging it.
fn get_within(addr: SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(limit)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    if let Err(e) = s.read_to_string(&mut resp) {
        panic!("GET {path}: no complete answer within {limit:?} ({e}); got {resp:?}");
    }
    let code = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (code, body)
}

/// Connections that send nothing, or half a request line, hold only
/// themselves: /readyz, /metrics and /healthz answer at once on another
/// connection while they stay open. (The old single-threaded server read
/// each of them in turn for up to 2 s before accepting the next, so these
/// answers came after ~8 s.)
#[test]
fn silent_scrapers_do_not_block_other_requests() {
    let s = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = s.metrics_addr.unwrap();
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut half = TcpStream::connect(addr).expect("connect");
    half.write_all(b"GET /metr").unwrap();
    held.push(half);

    let limit = Duration::from_secs(3);
    assert_eq!(get_within(addr, "/readyz", limit), (200, "ready\n".into()));
    let (code, body) = get_within(addr, "/metrics", limit);
    assert_eq!(code, 200);
    assert!(body.contains("gavel_connections_open"), "{body}");
    assert_eq!(get_within(addr, "/healthz", limit), (200, "ok\n".into()));

    // Still bounded: the server closes each of them once its request head
    // is overdue (5 s), well before this read gives up.
    for mut c in held {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "unexpected answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}
