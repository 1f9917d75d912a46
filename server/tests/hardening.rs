//! Hardening (issue 8): rate limits, per-address connection caps, TLS and
//! auth-token rotation, against the real binary.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Server;
use gavel_protocol::{
    BidRequest, Client, ClientError, ErrorCode, Request, Response, Status, PROTOCOL_VERSION,
};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
const SIGHUP: i32 = 1;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gavel-hardening-{tag}-{}-{}",
        std::process::id(),
        common::now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bid(auction_id: u64, bidder_id: u64, amount: u64, bid_id: u64) -> Request {
    Request::Bid(BidRequest {
        auction_id,
        bidder_id,
        amount,
        bid_id,
    })
}

/// Pipelines `reqs`, then reads one reply per request. Returns how many were
/// executed (RESULT) and how many refused with RATE_LIMITED; anything else
/// fails the test.
fn pipeline(c: &mut Client, reqs: &[Request]) -> (usize, usize) {
    let ids: Vec<u32> = reqs.iter().map(|r| c.send(r)).collect();
    c.flush().unwrap();
    let (mut done, mut limited) = (0, 0);
    for _ in &ids {
        match c.recv().unwrap().body {
            Response::Result(_) | Response::Pong(_) => done += 1,
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::RateLimited, "{message}");
                assert_eq!(message, "rate limit exceeded");
                limited += 1;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    (done, limited)
}

fn is_rate_limited<T: std::fmt::Debug>(r: &Result<T, ClientError>) -> bool {
    matches!(
        r,
        Err(ClientError::Server {
            code: ErrorCode::RateLimited,
            ..
        })
    )
}

#[test]
fn per_connection_rate_limit_spares_the_well_behaved_neighbour() {
    // 2 requests/s, bursts of 20: a pipelined flood of 200 is mostly refused
    // whatever the machine's speed.
    let s = Server::start(&["--rate-per-conn", "2/20"]);
    let mut setup = s.client();
    setup.open_auction(1, 0, 1, 0).unwrap();
    let started = Instant::now();

    let mut greedy = s.client();
    let reqs: Vec<Request> = (1..=200).map(|i| bid(1, 7, i, i)).collect();
    let (done, limited) = pipeline(&mut greedy, &reqs);
    let secs = started.elapsed().as_secs();
    assert_eq!(done + limited, 200);
    assert!(done >= 20, "the burst is allowed: {done}");
    assert!(
        done as u64 <= 20 + 2 * (secs + 1),
        "{done} executed in {secs}s"
    );
    // What was refused was not executed.
    let a = setup.get_auction(1).unwrap().unwrap();
    assert_eq!(a.bid_count as usize, done);

    // A well-behaved neighbour is not affected.
    let mut calm = s.client();
    for i in 0..10 {
        calm.ping(b"x").unwrap();
        let o = calm.bid(1, 8, 10_000 + i, 1000 + i).unwrap();
        assert_eq!(o.result.status, Status::Ok);
    }

    // The greedy connection was never closed: once its bucket refills it is
    // served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = greedy.ping(b"again");
        if r.is_ok() {
            break;
        }
        assert!(is_rate_limited(&r), "{r:?}");
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bidder_over_many_connections_is_limited_as_one() {
    // One bid per second after a burst of 10, for bidder and buyer ids.
    let s = Server::start(&["--rate-per-bidder", "1/10"]);
    let mut setup = s.client();
    for a in 1..=8 {
        setup.open_auction(a, 0, 1, 0).unwrap();
    }
    let started = Instant::now();
    let mut conns: Vec<Client> = (0..5).map(|_| s.client()).collect();
    // Bidder 42 bids 10 times on each of 5 connections, over 8 auctions (so
    // several shards); bidder 43 sends one bid per connection, within its burst.
    // Replies on different auctions may come back in any order: match them
    // by request id.
    let mut who: Vec<std::collections::HashMap<u32, u64>> = Vec::new();
    for (n, c) in conns.iter_mut().enumerate() {
        let mut m = std::collections::HashMap::new();
        for i in 0..10u64 {
            let k = n as u64 * 10 + i + 1;
            m.insert(c.send(&bid(k % 8 + 1, 42, 1000 + k, k)), 42);
            if i == 0 {
                m.insert(c.send(&bid(k % 8 + 1, 43, 1, 10_000 + k)), 43);
            }
        }
        c.flush().unwrap();
        who.push(m);
    }
    let (mut ok42, mut limited42, mut ok43) = (0u64, 0u64, 0u64);
    for (c, m) in conns.iter_mut().zip(&who) {
        for _ in 0..m.len() {
            let f = c.recv().unwrap();
            match (m[&f.request_id], f.body) {
                (42, Response::Result(_)) => ok42 += 1,
                (
                    42,
                    Response::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    },
                ) => limited42 += 1,
                (43, Response::Result(_)) => ok43 += 1,
                (w, other) => panic!("bidder {w}: unexpected reply {other:?}"),
            }
        }
    }
    let secs = started.elapsed().as_secs();
    assert_eq!(ok42 + limited42, 50);
    assert!(ok42 >= 10, "the burst is allowed: {ok42}");
    assert!(
        ok42 <= 10 + secs + 1,
        "{ok42} bids of one bidder in {secs}s"
    );
    assert_eq!(
        ok43, 5,
        "another bidder on the same connections is unaffected"
    );

    // Reads are not counted per bidder, and BUY draws from the same id's
    // bucket as BID.
    assert!(setup.get_auction(1).unwrap().is_some());
    setup.open_sale(1, 100, 0, 0, 0).unwrap();
    let r = setup.buy(1, 42, 1, 1);
    assert!(is_rate_limited(&r), "{r:?}");
    assert_eq!(setup.buy(1, 44, 1, 2).unwrap().result.status, Status::Ok);
}

/// A client whose socket is bound to `src` (an address of 127/8) before connecting.
fn client_from(src: &str, server: SocketAddr) -> std::io::Result<Client> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&src.into())?;
    sock.connect(&server.into())?;
    let stream: TcpStream = sock.into();
    let c = Client::from_stream(stream)?;
    c.set_timeout(Some(Duration::from_secs(20)))?;
    Ok(c)
}

/// The refusal a connection over the per-address cap gets, then EOF.
fn assert_refused_per_ip(mut c: Client) {
    let f = c.recv().expect("a refusal before the close");
    match f.body {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::Busy);
            assert_eq!(message, "too many connections from your address");
        }
        other => panic!("unexpected reply {other:?}"),
    }
    match c.recv() {
        Err(ClientError::Closed) | Err(ClientError::Io(_)) => {}
        other => panic!("connection should be closed, got {other:?}"),
    }
}

#[test]
fn per_ip_connection_cap() {
    let s = Server::start(&["--max-connections-per-ip", "2"]);
    let mut a1 = client_from("127.0.0.2", s.addr).unwrap();
    let mut a2 = client_from("127.0.0.2", s.addr).unwrap();
    // A round trip each: both are accepted and counted.
    a1.ping(b"1").unwrap();
    a2.ping(b"2").unwrap();
    let a3 = client_from("127.0.0.2", s.addr).unwrap();
    assert_refused_per_ip(a3);

    // Another address has its own allowance.
    let mut b1 = client_from("127.0.0.3", s.addr).unwrap();
    let mut b2 = client_from("127.0.0.3", s.addr).unwrap();
    b1.ping(b"1").unwrap();
    b2.ping(b"2").unwrap();
    assert_refused_per_ip(client_from("127.0.0.3", s.addr).unwrap());
    // The connections already in are untouched by the refusals.
    a1.ping(b"still").unwrap();
    b2.ping(b"still").unwrap();

    // Closing one frees a slot for that address.
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = client_from("127.0.0.2", s.addr).unwrap();
        match c.ping(b"again") {
            Ok(_) => break,
            // Refused (the close may beat the reply: a reset).
            Err(ClientError::Server {
                code: ErrorCode::Busy,
                ..
            })
            | Err(ClientError::Io(_))
            | Err(ClientError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    a2.ping(b"still").unwrap();
}

struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

/// A throwaway CA and a server certificate for localhost / 127.0.0.1.
fn make_pki(tag: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let dir = temp_dir(tag);
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gavel test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca_cert.pem(),
    }
}

/// A server with the PKI's certificate, plus `extra` flags.
fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    let cert = pki.dir.join("cert.pem");
    let key = pki.dir.join("key.pem");
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn tls_round_trip() {
    let pki = make_pki("tls");
    let s = tls_server(&pki, &[]);

    for name in ["localhost", "127.0.0.1"] {
        let mut c = Client::connect_tls(s.addr, name, pki.ca_pem.as_bytes()).unwrap();
        c.set_timeout(Some(Duration::from_secs(20))).unwrap();
        assert!(c.is_tls());
        assert_eq!(c.hello(b"").unwrap().version, PROTOCOL_VERSION);
        assert_eq!(&c.ping(b"over tls").unwrap()[..], b"over tls");
    }

    let mut c = Client::connect_tls(s.addr, "localhost", pki.ca_pem.as_bytes()).unwrap();
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    c.open_auction(1, 0, 1, 0).unwrap();
    // A pipelined burst larger than one TLS record each way.
    let reqs: Vec<Request> = (1..=2000).map(|i| bid(1, 7, i, i)).collect();
    let (done, limited) = pipeline(&mut c, &reqs);
    assert_eq!((done, limited), (2000, 0));
    let a = c.get_auction(1).unwrap().unwrap();
    assert_eq!((a.high_bid, a.bid_count), (2000, 2000));
    c.shutdown_write().unwrap();

    // A client that trusts another CA refuses the server.
    let other = make_pki("tls-other");
    assert!(Client::connect_tls(s.addr, "localhost", other.ca_pem.as_bytes()).is_err());
    // So does one checking a name the certificate does not carry.
    assert!(Client::connect_tls(s.addr, "example.com", pki.ca_pem.as_bytes()).is_err());
    // Plain TCP gets no answer, only a close.
    let mut plain = s.client();
    assert!(plain.ping(b"plain").is_err());

    // The server is unaffected by the failed handshakes.
    let mut c = Client::connect_tls(s.addr, "localhost", pki.ca_pem.as_bytes()).unwrap();
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(c.get_auction(1).unwrap().unwrap().bid_count, 2000);
    let _ = std::fs::remove_dir_all(&pki.dir);
    let _ = std::fs::remove_dir_all(&other.dir);
}

fn hello_result(s: &Server, token: &[u8]) -> Result<(), ClientError> {
    let mut c = s.client();
    c.hello(token).map(|_| ())
}

#[test]
fn rotated_token_file_takes_effect_on_sighup() {
    let dir = temp_dir("tokens");
    let file = dir.join("tokens");
    std::fs::write(&file, "# rotated by the test\n\ntoken-A\n").unwrap();
    let s = Server::start(&["--auth-token-file", file.to_str().unwrap()]);

    let mut old = s.client();
    old.hello(b"token-A").unwrap();
    old.ping(b"before").unwrap();
    let r = hello_result(&s, b"token-B");
    assert!(
        matches!(
            r,
            Err(ClientError::Server {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{r:?}"
    );

    std::fs::write(&file, "token-B\n# token-A retired\n").unwrap();
    assert_eq!(unsafe { kill(s.pid() as i32, SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hello_result(&s, b"token-B").is_err() {
        assert!(Instant::now() < deadline, "SIGHUP reload never took effect");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = hello_result(&s, b"token-A");
    assert!(
        matches!(
            r,
            Err(ClientError::Server {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{r:?}"
    );
    // Without HELLO nothing is served either.
    let mut anon = s.client();
    assert!(anon.ping(b"x").is_err());
    // The connection authenticated with the retired token stays up.
    assert_eq!(&old.ping(b"after").unwrap()[..], b"after");
    old.open_auction(1, 0, 1, 0).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS peer that never finishes its handshake (silent, or trickling a
/// partial ClientHello) is closed after --idle-timeout, like a plain slowloris.
#[test]
fn stalled_tls_handshake_is_closed_after_idle_timeout() {
    use std::io::{Read, Write};
    let pki = make_pki("tls-stall");
    let s = tls_server(&pki, &["--idle-timeout", "1s"]);
    let silent = std::net::TcpStream::connect(s.addr).unwrap();
    let mut trickle = std::net::TcpStream::connect(s.addr).unwrap();
    // The first bytes of a TLS record header (handshake, TLS 1.0 legacy version).
    trickle.write_all(&[0x16, 0x03, 0x01]).unwrap();
    for mut c in [silent, trickle] {
        // Bounded: the server must close within a few sweep periods; the
        // timeout only turns a regression into a failure instead of a hang.
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let t = std::time::Instant::now();
        // The close may carry a TLS alert record first; what matters is EOF.
        let mut got = Vec::new();
        match c.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected a close, got {other:?} after {:?}", t.elapsed()),
        }
        assert!(got.len() < 64, "only an alert, no data: {got:?}");
    }
    // A real TLS client is still served.
    let mut c = Client::connect_tls(s.addr, "localhost", pki.ca_pem.as_bytes()).unwrap();
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(&c.ping(b"ok").unwrap()[..], b"ok");
    let _ = std::fs::remove_dir_all(&pki.dir);
}
