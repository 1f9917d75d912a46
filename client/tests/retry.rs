//! The retry policy against a scripted in-process server, for the answers
//! the real server cannot be made to give on demand (IN_DOUBT, an unknown
//! ERROR code, a reply that never comes, a connection dropped right after a
//! request): a keyed request is resent with the same key until it gets an
//! outcome, and the outcome says whether it was a replay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use gavel_client::{Backoff, Client, Config, Error, RetryPolicy};
use gavel_protocol::message::encode_error;
use gavel_protocol::{
    BidRequest, Decoder, ErrorCode, Request, Response, ResultPayload, Status, FLAG_REPLAYED,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

enum Act {
    Reply(Response, u8),
    /// Close the connection without answering.
    Close,
    /// Never answer.
    Silent,
    Raw(Vec<u8>),
}

struct Fake {
    addr: String,
    /// Every non-HELLO request seen, with the connection it came on.
    seen: Arc<Mutex<Vec<(usize, Request)>>>,
}

fn ok(flags: u8) -> Act {
    Act::Reply(
        Response::Result(ResultPayload::new(Status::Ok, 10, 7)),
        flags,
    )
}

fn err(code: ErrorCode) -> Act {
    Act::Reply(
        Response::Error {
            code,
            message: code.name().into(),
        },
        0,
    )
}

/// A server that answers HELLO with WELCOME and the n-th other request
/// with `script(n)`.
async fn fake(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let n = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut conn_no = 0;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            conn_no += 1;
            let (script, n, seen) = (script.clone(), n.clone(), seen2.clone());
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let dec = Decoder::new(65535);
                loop {
                    while let Some(f) = dec.decode_request(&mut buf).unwrap() {
                        let mut out = BytesMut::new();
                        let act = if let Request::Hello { .. } = f.body {
                            Act::Reply(
                                Response::Welcome {
                                    version: 1,
                                    node_id: 9,
                                    shards: 1,
                                    max_payload: 1024,
                                },
                                0,
                            )
                        } else {
                            seen.lock().unwrap().push((conn_no, f.body.clone()));
                            script(n.fetch_add(1, Ordering::SeqCst))
                        };
                        match act {
                            Act::Reply(r, flags) => r.encode(f.request_id, flags, &mut out),
                            Act::Raw(mut b) => {
                                b[4..8].copy_from_slice(&f.request_id.to_be_bytes());
                                out.extend_from_slice(&b);
                            }
                            Act::Close => return,
                            Act::Silent => {}
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    });
    Fake { addr, seen }
}

fn quick(addr: &str) -> Config {
    let fast = Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        multiplier: 2.0,
    };
    Config::new(addr)
        .request_timeout(Duration::from_secs(2))
        .reconnect_backoff(fast)
        .retry(RetryPolicy {
            backoff: fast,
            ..RetryPolicy::default()
        })
}

const BID: BidRequest = BidRequest {
    auction_id: 1,
    bidder_id: 7,
    amount: 10,
    bid_id: 0xB1D,
};

fn keys(f: &Fake) -> Vec<u64> {
    f.seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| match r {
            Request::Bid(b) => b.bid_id,
            r => panic!("{r:?}"),
        })
        .collect()
}

#[tokio::test]
async fn in_doubt_then_the_replay() {
    let f = fake(|n| match n {
        0 => err(ErrorCode::InDoubt),
        _ => ok(FLAG_REPLAYED),
    })
    .await;
    let c = Client::connect(quick(&f.addr)).await.unwrap();
    let o = c.bid(BID).await.unwrap();
    assert!(o.is_ok() && o.replayed && o.attempts == 2, "{o:?}");
    assert_eq!(keys(&f), vec![0xB1D, 0xB1D], "resent with the same key");
}

#[tokio::test]
async fn dropped_connection_reconnects_and_resends_the_same_key() {
    let f = fake(|n| match n {
        0 => Act::Close,
        _ => ok(FLAG_REPLAYED),
    })
    .await;
    let c = Client::connect(quick(&f.addr)).await.unwrap();
    let o = c.bid(BID).await.unwrap();
    assert!(o.replayed && o.attempts == 2, "{o:?}");
    assert_eq!(c.reconnects(), 1);
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].0, seen[1].0),
        (1, 2),
        "second attempt on a new connection"
    );
    assert_eq!(seen[0].1, seen[1].1, "the very same request");
}

#[tokio::test]
async fn every_retryable_answer_is_retried() {
    let f = fake(|n| match n {
        0 => err(ErrorCode::Unavailable),
        1 => {
            // ERROR with code 99, unknown to this client: outcome unknown.
            let mut b = BytesMut::new();
            encode_error(&mut b, 0, ErrorCode::Malformed, "x");
            b[8..10].copy_from_slice(&99u16.to_be_bytes());
            Act::Raw(b.to_vec())
        }
        2 => err(ErrorCode::Busy),
        3 => err(ErrorCode::RateLimited),
        4 => err(ErrorCode::ShuttingDown),
        5 => Act::Close,
        _ => ok(0),
    })
    .await;
    let c = Client::connect(quick(&f.addr)).await.unwrap();
    let o = c.bid(BID).await.unwrap();
    assert!(o.is_ok() && !o.replayed && o.attempts == 7, "{o:?}");
    assert_eq!(keys(&f), vec![0xB1D; 7]);
}

#[tokio::test]
async fn no_reply_exhausts_the_policy_and_says_in_doubt() {
    let f = fake(|_| Act::Silent).await;
    let cfg = quick(&f.addr)
        .request_timeout(Duration::from_millis(150))
        .retry(RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(5),
                multiplier: 1.0,
            },
            ..RetryPolicy::default()
        });
    let c = Client::connect(cfg).await.unwrap();
    let e = c.bid(BID).await.unwrap_err();
    match &e {
        Error::RetriesExhausted {
            attempts: 3,
            in_doubt: true,
            last,
        } => assert!(matches!(**last, Error::Timeout(_))),
        e => panic!("{e}"),
    }
    assert!(e.outcome_unknown());
    assert_eq!(keys(&f), vec![0xB1D; 3]);
    // Timed-out requests do not linger in the connection's table.
    assert_eq!(c.in_flight_on_connection(), 0);
}

#[tokio::test]
async fn unkeyed_requests_can_be_left_alone() {
    let f = fake(|_| err(ErrorCode::Unavailable)).await;
    let cfg = quick(&f.addr).retry(RetryPolicy {
        unkeyed: false,
        max_attempts: 3,
        ..RetryPolicy::default()
    });
    let c = Client::connect(cfg).await.unwrap();
    let e = c.get_auction(1).await.unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::Unavailable));
    assert_eq!(f.seen.lock().unwrap().len(), 1, "sent once");
    // A keyed one is still retried.
    let e = c.bid(BID).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::RetriesExhausted {
                attempts: 3,
                in_doubt: false,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn nothing_listening_fails_the_first_connect() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = Client::connect(Config::new(format!("127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
}

#[tokio::test]
async fn a_server_that_never_answers_hello_times_the_connect_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accepted, never read, never answered
        }
    });
    let cfg = Config::new(addr).connect_timeout(Duration::from_millis(200));
    let e = Client::connect(cfg).await.unwrap_err();
    assert!(matches!(e, Error::ConnectTimeout(_)), "{e}");
}
