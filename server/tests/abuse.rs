//! Bounded under abuse (issue 17): every structure capped, silent and
//! unauthenticated clients shut out — against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{raw_frame, Server};
use gavel_protocol::frame::msg_type;
use gavel_protocol::{ClientError, ErrorCode, Push, Request, Response, Status};

/// Value of one sample line of `/metrics`, e.g. `gavel_subscriptions`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

fn metric(s: &Server, name: &str) -> f64 {
    let (code, body) = s.http_get("/metrics");
    assert_eq!(code, 200);
    sample(&body, name).unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// Waits until `metric` reads `want`; panics with the last value after 10 s.
fn wait_for_metric(s: &Server, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(s, name);
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {v}, expected {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// SUBSCRIBE then a reset, 3,000 times: no subscription may outlive its
/// connection.
fn subscribe_then_reset(extra: &[&str]) {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0", "--shards", "1"];
    args.extend(extra);
    let s = Server::start(&args);
    let mut setup = s.client();
    setup.open_auction(1, 0, 1, 0).unwrap();
    let sub = raw_frame(msg_type::SUBSCRIBE, 1, &1u64.to_be_bytes());
    for i in 0..3000 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(&sub).unwrap();
        if i % 2 == 1 {
            // Give the server a moment to read the frame with the reset.
            std::thread::sleep(Duration::from_micros(50));
        }
        reset(c);
    }
    wait_for_metric(&s, "gavel_connections_open", 1.0);
    // The shard has handled every disconnect notice once a request sent
    // after them is answered (one shard, one queue).
    setup.get_auction(1).unwrap();
    wait_for_metric(&s, "gavel_subscriptions", 0.0);
}

#[test]
fn subscribe_then_reset_leaves_no_subscription_behind() {
    // The SUBSCRIBE is decoded in the same loop turn as the read that sees
    // the reset: the disconnect notice must reach the shard after it.
    subscribe_then_reset(&[]);
}

#[test]
fn subscribe_then_reset_leaves_no_subscription_behind_cross_node() {
    // Cross-node: the notice must also wait for the SUBSCRIBE's Redis read.
    let r = gavel_testkit::redis::RedisServer::start();
    subscribe_then_reset(&["--redis", &r.url()]);
}

/// The ERROR a call was answered with: (code, message).
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected an ERROR, got {other:?}"),
    }
}

#[test]
fn subscriptions_per_connection_are_capped() {
    let s = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-subscriptions-per-conn",
        "3",
    ]);
    let mut setup = s.client();
    for a in 1..=6 {
        setup.open_auction(a, 0, 1, 0).unwrap();
    }
    let mut c = s.client();
    for a in 1..=3 {
        assert_eq!(c.subscribe(a).unwrap().result.status, Status::Ok);
    }
    let (code, message) = refused(c.subscribe(4));
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("too many subscriptions"), "{message}");
    // NOT_FOUND and UNSUBSCRIBE of what is not watched change nothing.
    c.unsubscribe(5).unwrap();
    assert_eq!(refused(c.subscribe(4)).0, ErrorCode::Busy);
    // An UNSUBSCRIBE frees a place, and so does an auction's closing.
    c.unsubscribe(2).unwrap();
    assert_eq!(c.subscribe(4).unwrap().result.status, Status::Ok);
    assert_eq!(refused(c.subscribe(5)).0, ErrorCode::Busy);
    setup.close_auction(3).unwrap();
    assert!(matches!(
        c.next_push().unwrap(),
        Push::AuctionClosed { auction_id: 3, .. }
    ));
    assert_eq!(c.subscribe(5).unwrap().result.status, Status::Ok);
    // Pipelined, SUBSCRIBEs in flight count: a fresh connection sending six
    // at once gets three subscriptions, whatever the shards' timing.
    let mut p = s.client();
    let ids: Vec<u32> = (1..=6)
        .map(|a| p.send(&Request::Subscribe { auction_id: a }))
        .collect();
    p.flush().unwrap();
    let mut ok = 0;
    for id in ids {
        match p.recv_for(id).unwrap().body {
            Response::Result(r) if r.status == Status::Ok => ok += 1,
            Response::Result(r) if r.status == Status::Closed => {}
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::Busy),
            other => panic!("{other:?}"),
        }
    }
    assert!(ok <= 3, "{ok} subscriptions");
    assert!(
        metric(
            &s,
            "gavel_limit_refusals_total{limit=\"max_subscriptions_per_conn\"}"
        ) >= 4.0
    );
}

#[test]
fn subscriptions_are_capped_per_server() {
    let s = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--max-subscriptions",
        "4",
    ]);
    let mut setup = s.client();
    for a in 1..=3 {
        setup.open_auction(a, 0, 1, 0).unwrap();
    }
    let mut a = s.client();
    let mut b = s.client();
    for id in 1..=3 {
        a.subscribe(id).unwrap();
    }
    assert_eq!(b.subscribe(1).unwrap().result.status, Status::Ok);
    let (code, message) = refused(b.subscribe(2));
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("subscription limit"), "{message}");
    assert_eq!(metric(&s, "gavel_subscriptions"), 4.0);
    drop(a);
    wait_for_metric(&s, "gavel_subscriptions", 1.0);
    assert_eq!(b.subscribe(2).unwrap().result.status, Status::Ok);
    assert_eq!(
        metric(
            &s,
            "gavel_limit_refusals_total{limit=\"max_subscriptions\"}"
        ),
        1.0
    );
}

#[test]
fn a_tiny_reply_queue_slows_shards_down_without_deadlock() {
    // One event loop, four shards, a reply queue of one batch: shards wait
    // for the loop all the time, and everything is still answered.
    let s = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--shards",
        "4",
        "--reply-queue",
        "1",
    ]);
    let mut setup = s.client();
    for a in 1..=8 {
        setup.open_auction(a, 0, 1, 0).unwrap();
    }
    let mut watchers: Vec<_> = (0..20).map(|_| s.client()).collect();
    for w in &mut watchers {
        for a in 1..=8 {
            w.subscribe(a).unwrap();
        }
    }
    let addr = s.addr;
    let bidders: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = gavel_protocol::Client::connect(addr).unwrap();
                c.set_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut answered = 0;
                for round in 0..20u64 {
                    let ids: Vec<u32> = (0..64u64)
                        .map(|i| {
                            let n = round * 64 + i + 1;
                            c.send(&Request::Bid(gavel_protocol::BidRequest {
                                auction_id: n % 8 + 1,
                                bidder_id: t + 1,
                                amount: n * 100 + t,
                                bid_id: t * 1_000_000 + n,
                            }))
                        })
                        .collect();
                    c.flush().unwrap();
                    for id in ids {
                        match c.recv_for(id).unwrap().body {
                            Response::Result(_) => answered += 1,
                            Response::Error { code, .. } => assert_eq!(code, ErrorCode::Busy),
                            other => panic!("{other:?}"),
                        }
                    }
                }
                answered
            })
        })
        .collect();
    let answered: usize = bidders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(answered > 0);
    // The watchers got their pushes (they read them: nobody was cut off).
    for w in &mut watchers {
        w.ping(b"still here").unwrap();
    }
    assert!(metric(&s, "gavel_reply_queue_full_total") > 0.0);
}

#[test]
fn auctions_and_sales_are_capped() {
    let s = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--max-auctions",
        "4",
        "--max-sales",
        "2",
    ]);
    let mut c = s.client();
    for a in 1..=4 {
        assert_eq!(
            c.open_auction(a, 0, 1, 0).unwrap().result.status,
            Status::Ok
        );
    }
    let (code, message) = refused(c.open_auction(5, 0, 1, 0));
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("auction limit reached"), "{message}");
    // What exists still answers: a replayed OPEN, a conflicting one, bids.
    assert!(c.open_auction(1, 0, 1, 0).unwrap().replayed);
    assert_eq!(
        c.open_auction(1, 9, 1, 0).unwrap().result.status,
        Status::AlreadyExists
    );
    assert_eq!(c.bid(1, 7, 10, 1).unwrap().result.status, Status::Ok);

    for k in 1..=2 {
        assert_eq!(
            c.open_sale(k, 5, 0, 0, 0).unwrap().result.status,
            Status::Ok
        );
    }
    let (code, message) = refused(c.open_sale(3, 5, 0, 0, 0));
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("sale limit reached"), "{message}");
    assert!(c.open_sale(2, 5, 0, 0, 0).unwrap().replayed);
    assert_eq!(c.buy(1, 7, 1, 1).unwrap().result.status, Status::Ok);

    assert_eq!(metric(&s, "gavel_auctions"), 4.0);
    assert_eq!(metric(&s, "gavel_sales"), 2.0);
    assert_eq!(
        metric(&s, "gavel_limit_refusals_total{limit=\"max_auctions\"}"),
        1.0
    );
    assert_eq!(
        metric(&s, "gavel_limit_refusals_total{limit=\"max_sales\"}"),
        1.0
    );
}

/// Reads until EOF: Ok(bytes) if the server closed cleanly in time.
fn read_to_close(s: &mut TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(within))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn silent_connections_are_closed_at_the_idle_timeout() {
    let s = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-connections",
        "100",
        "--idle-timeout",
        "1s",
    ]);
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    wait_for_metric(&s, "gavel_connections_open", 100.0);
    // Full: the next one is refused.
    let mut refused = TcpStream::connect(s.addr).unwrap();
    let busy = read_to_close(&mut refused, Duration::from_secs(5)).unwrap();
    assert_eq!(busy.get(..2), Some(&[msg_type::ERROR, 0][..]), "{busy:?}");
    // Each silent one is closed without a reply, within a few seconds.
    for c in &mut silent {
        let got = read_to_close(c, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("not closed after {:?}: {e}", started.elapsed()));
        assert!(got.is_empty(), "{got:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the timeout"
    );
    // And a new client gets in.
    let mut c = s.client();
    c.ping(b"in").unwrap();
    assert!(metric(&s, "gavel_connections_closed_total{reason=\"idle\"}") >= 100.0);
}

/// Sends `bytes` on a fresh connection, then reads every frame until the
/// server closes: (type, request_id, ERROR code if an ERROR).
fn exchange(s: &Server, bytes: &[u8]) -> Vec<(u8, u32, Option<ErrorCode>)> {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(bytes).unwrap();
    let got = read_to_close(&mut c, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connection not closed: {e}"));
    let mut buf = bytes::BytesMut::from(&got[..]);
    let d = gavel_protocol::Decoder::new(65535);
    let mut out = Vec::new();
    while let Some(f) = d.decode_server(&mut buf).unwrap() {
        let (t, code) = match f.body {
            gavel_protocol::ServerMessage::Response(Response::Error { code, .. }) => {
                (msg_type::ERROR, Some(code))
            }
            gavel_protocol::ServerMessage::Response(Response::Welcome { .. }) => {
                (msg_type::WELCOME, None)
            }
            other => panic!("unexpected {other:?}"),
        };
        out.push((t, f.request_id, code));
    }
    assert!(buf.is_empty(), "trailing bytes");
    out
}

fn hello_payload(version: u16, token: &[u8]) -> Vec<u8> {
    let mut p = version.to_be_bytes().to_vec();
    p.push(token.len() as u8);
    p.extend_from_slice(token);
    p
}

#[test]
fn before_hello_anything_but_a_valid_hello_is_unauthorized_and_closes() {
    let s = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--auth-token",
        "sesame",
        "--rate-per-conn",
        "1000/1",
    ]);
    let unauthorized = |rid| vec![(msg_type::ERROR, rid, Some(ErrorCode::Unauthorized))];
    let mut bad_hello = hello_payload(1, b"sesame");
    bad_hello.push(b'!'); // token_len no longer matches
    let mut zero_key_bid = [0u8; 32];
    zero_key_bid[7] = 1;
    let oversized = [msg_type::PING, 0, 0xff, 0xff, 0, 0, 0, 9];
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("unknown type", raw_frame(0x7f, 11, b"?"), 11),
        (
            "malformed HELLO",
            raw_frame(msg_type::HELLO, 12, &bad_hello),
            12,
        ),
        ("short HELLO", raw_frame(msg_type::HELLO, 13, &[0]), 13),
        (
            "BID with key 0",
            raw_frame(msg_type::BID, 14, &zero_key_bid),
            14,
        ),
        (
            "wrong length",
            raw_frame(msg_type::GET_AUCTION, 15, &[1, 2]),
            15,
        ),
        ("oversized", oversized.to_vec(), 9),
        ("PING", raw_frame(msg_type::PING, 16, b"hi"), 16),
        (
            "bad token",
            raw_frame(msg_type::HELLO, 17, &hello_payload(1, b"open")),
            17,
        ),
        (
            // Over --rate-per-conn (burst 1) before HELLO: still UNAUTHORIZED.
            "two PINGs",
            [
                raw_frame(msg_type::PING, 18, b""),
                raw_frame(msg_type::PING, 19, b""),
            ]
            .concat(),
            18,
        ),
    ];
    for (what, bytes, rid) in cases {
        assert_eq!(exchange(&s, &bytes), unauthorized(rid), "{what}");
    }
    // A bad version is UNSUPPORTED_VERSION (checked before the token), and closes too.
    assert_eq!(
        exchange(&s, &raw_frame(msg_type::HELLO, 20, &hello_payload(2, b"x"))),
        vec![(msg_type::ERROR, 20, Some(ErrorCode::UnsupportedVersion))]
    );
    // After a valid HELLO, the same garbage is answered and the connection stays.
    let mut c = s.client();
    c.hello(b"sesame").unwrap();
    c.send_raw(&raw_frame(0x7f, 21, b"?"));
    c.flush().unwrap();
    match c.recv().unwrap().body {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::UnknownType),
        other => panic!("{other:?}"),
    }
    c.ping(b"still open").unwrap();
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn unsent_output_is_bounded_across_connections() {
    // Each connection may hold 64 MiB unsent, the server 4 MiB in all.
    const BUDGET: u64 = 4 << 20;
    let s = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-payload",
        "65535",
        "--output-cap",
        "67108864",
        "--output-budget",
        &BUDGET.to_string(),
        // Small kernel buffers both ways: what the server holds shows sooner.
        "--send-buffer",
        "65536",
    ]);
    let rss_before = rss_bytes(s.pid());
    let ping = raw_frame(msg_type::PING, 1, &[7u8; 60_000]);
    // Four clients send PINGs and never read their PONGs.
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(65536).unwrap();
            sock.connect(&s.addr.into()).unwrap();
            let mut c: TcpStream = sock.into();
            c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            let ping = ping.clone();
            std::thread::spawn(move || {
                let mut sent = 0usize;
                while sent < 64 << 20 && c.write_all(&ping).is_ok() {
                    sent += ping.len();
                }
                (c, sent)
            })
        })
        .collect();
    let floods: Vec<(TcpStream, usize)> = floods.into_iter().map(|t| t.join().unwrap()).collect();
    let sent: usize = floods.iter().map(|f| f.1).sum();
    let unsent = metric(&s, "gavel_output_unsent_bytes");
    let grown = rss_bytes(s.pid()).saturating_sub(rss_before);
    eprintln!("sent {sent} B, unsent {unsent} B, RSS grew {grown} B");
    // Over the budget by at most what one read can add per connection.
    assert!(
        unsent <= (BUDGET + 4 * (256 << 10)) as f64,
        "unsent {unsent}"
    );
    assert!(grown < 48 << 20, "RSS grew {grown} B");
    assert!(metric(&s, "gavel_output_budget_pauses_total") >= 1.0);
    // Once they read, all they sent is answered.
    let drains: Vec<_> = floods
        .into_iter()
        .map(|(mut c, sent)| {
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut sink = vec![0u8; 1 << 20];
                let mut got = 0;
                while got < sent {
                    got += c.read(&mut sink).expect("PONGs keep coming");
                }
                assert_eq!(got, sent, "a PONG echoes its PING");
            })
        })
        .collect();
    for d in drains {
        d.join().unwrap();
    }
    wait_for_metric(&s, "gavel_output_unsent_bytes", 0.0);
    s.client().ping(b"fine").unwrap();
}

/// Starts the server with its log (RUST_LOG=info) in a file; returns it
/// with the address it listens on.
fn start_logged(
    args: &[&str],
    log: &std::path::Path,
) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gavel-server"))
        .args(["--listen", "127.0.0.1:0", "--store", "memory"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    (child, addr)
}

#[test]
fn floods_of_bad_clients_cost_a_few_log_lines() {
    let log = std::env::temp_dir().join(format!("gavel-abuse-log-{}.txt", std::process::id()));
    let (mut child, addr) = start_logged(
        &[
            "--auth-token",
            "sesame",
            "--max-connections",
            "1",
            "--idle-timeout",
            "1s",
            "--log-summary-interval",
            "2s",
        ],
        &log,
    );
    let bad = raw_frame(msg_type::HELLO, 1, &hello_payload(1, b"wrong"));
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&bad).unwrap();
        read_to_close(&mut c, Duration::from_secs(10)).unwrap();
    }
    // One silent connection holds the only place: 200 refused, then it is
    // closed idle.
    let _silent = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).unwrap();
        let _ = read_to_close(&mut c, Duration::from_secs(10));
    }
    // Past the interval: the summaries are written.
    std::thread::sleep(Duration::from_millis(3500));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("bad auth token"), 1, "{text}");
    assert_eq!(
        count("199 more connections closed for a bad or missing HELLO"),
        1,
        "{text}"
    );
    assert_eq!(count("refused connection"), 1, "{text}");
    assert_eq!(count("199 more connections refused at accept"), 1, "{text}");
    assert_eq!(count("within --idle-timeout of connecting"), 1, "{text}");
    assert!(text.lines().count() < 20, "{text}");
}

#[test]
fn zero_bidders_and_buyers_and_backwards_sales_are_malformed() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    c.open_sale(1, 10, 0, 0, 0).unwrap();
    let malformed = |r: Result<gavel_protocol::client::Outcome, ClientError>| {
        let (code, message) = refused(r);
        assert_eq!(code, ErrorCode::Malformed);
        message
    };
    assert!(malformed(c.bid(1, 0, 10, 1)).contains("bidder_id"));
    assert!(malformed(c.buy(1, 0, 1, 1)).contains("buyer_id"));
    let now = common::now_ms();
    assert!(malformed(c.open_sale(2, 10, 0, now + 5_000, now + 5_000)).contains("ends_at_ms"));
    assert!(malformed(c.open_sale(2, 10, 0, now + 5_000, now + 1_000)).contains("ends_at_ms"));
    // None of them was executed, and the connection is still open.
    let a = c.get_auction(1).unwrap().unwrap();
    assert_eq!((a.bid_count, a.high_bidder), (0, 0));
    assert_eq!(c.get_sale(1).unwrap().unwrap().sold, 0);
    assert!(c.get_sale(2).unwrap().is_none());
    // What is allowed still is: no end, or an end after the start.
    assert_eq!(
        c.open_sale(2, 10, 0, now + 5_000, 0).unwrap().result.status,
        Status::Ok
    );
    assert_eq!(
        c.open_sale(3, 10, 0, now, now + 1).unwrap().result.status,
        Status::Ok
    );
    assert_eq!(c.bid(1, 7, 10, 1).unwrap().result.status, Status::Ok);
}

#[test]
fn a_closing_error_is_followed_by_a_clean_close_not_a_reset() {
    // FRAME_TOO_LARGE with 64 KiB behind it in the same write, which the
    // server never decodes: it must still end with a FIN after the ERROR,
    // not a reset (which may destroy the ERROR before it is read).
    let s = Server::start(&[]);
    for _ in 0..20 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        let mut bytes = vec![msg_type::PING, 0, 0xff, 0xff, 0, 0, 0, 5];
        bytes.extend_from_slice(&[0x55u8; 64 * 1024]);
        c.write_all(&bytes).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let got = read_to_close(&mut c, Duration::from_secs(10))
            .expect("the connection ends with a FIN, not a reset");
        assert_closing_error(&got);
    }
}

fn assert_closing_error(got: &[u8]) {
    let mut buf = bytes::BytesMut::from(got);
    let f = gavel_protocol::Decoder::new(65535)
        .decode_server(&mut buf)
        .unwrap()
        .expect("the ERROR arrived");
    assert_eq!(f.request_id, 5);
    assert!(matches!(
        f.body,
        gavel_protocol::ServerMessage::Response(Response::Error {
            code: ErrorCode::FrameTooLarge,
            ..
        })
    ));
    assert!(buf.is_empty());
}

#[test]
fn store_up_agrees_with_readyz_on_the_memory_store() {
    let s = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    assert_eq!(s.http_get("/readyz").0, 200);
    assert_eq!(metric(&s, "gavel_store_up"), 1.0);
}
