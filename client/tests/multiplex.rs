//! Many tasks on one connection: every request answered, every reply
//! matched to its own request, and the outcomes consistent with the
//! server's state. Also: a pool spreads load, auth tokens, unkeyed calls.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use gavel_client::{Client, Config, Error, Pool, RetryPolicy};
use gavel_protocol::{BidRequest, ErrorCode, OpenAuctionRequest, Status};

const TASKS: u64 = 200;
const BIDS: u64 = 50;
const AUCTIONS: u64 = 20;

fn open(id: u64) -> OpenAuctionRequest {
    OpenAuctionRequest {
        auction_id: id,
        reserve: 0,
        min_increment: 1,
        ends_at_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tasks_share_one_connection() {
    let server = Server::start(&[]);
    let client = Client::connect(Config::new(server.addr.to_string()))
        .await
        .unwrap();
    for a in 1..=AUCTIONS {
        assert!(client.open_auction(open(a)).await.unwrap().is_ok());
    }

    // Task t bids on auction (t % AUCTIONS) + 1 with amounts that interleave
    // with the other tasks', so some bids win and some are outbid.
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let auction_id = t % AUCTIONS + 1;
            let bidder_id = t + 1;
            let mut out = Vec::new();
            for i in 0..BIDS {
                let amount = 1 + i * TASKS + t;
                let bid_id = t * 1_000 + i + 1;
                let o = c
                    .bid(BidRequest {
                        auction_id,
                        bidder_id,
                        amount,
                        bid_id,
                    })
                    .await
                    .unwrap();
                assert_eq!(o.attempts, 1);
                assert!(!o.replayed);
                match o.status() {
                    // The reply is this bid's: it is now the high bid.
                    Status::Ok => assert_eq!((o.result.value, o.result.aux), (amount, bidder_id)),
                    Status::Outbid => assert!(o.result.value >= amount),
                    s => panic!("unexpected {s:?}"),
                }
                out.push((auction_id, bidder_id, amount, o.status()));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len() as u64, TASKS * BIDS, "every request answered");
    assert_eq!(client.reconnects(), 0, "one connection throughout");

    // The server agrees with the outcomes: per auction, bid_count is the
    // number of OKs and the high bid is the largest accepted amount.
    let mut per: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    for (a, bidder, amount, s) in all {
        if s == Status::Ok {
            let e = per.entry(a).or_default();
            e.0 += 1;
            if amount > e.1 {
                e.1 = amount;
                e.2 = bidder;
            }
        }
    }
    for a in 1..=AUCTIONS {
        let info = client.get_auction(a).await.unwrap().unwrap();
        let (count, high, bidder) = per[&a];
        assert_eq!(
            (info.bid_count, info.high_bid, info.high_bidder),
            (count, high, bidder),
            "auction {a}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_does_not_hold_up_later_ones() {
    // Replies come back per request_id, in whatever order the server sends
    // them; a caller waiting on one reply never waits on another's.
    let server = Server::start(&[]);
    let client = Client::connect(Config::new(server.addr.to_string()))
        .await
        .unwrap();
    client.open_auction(open(1)).await.unwrap();
    let big = vec![7u8; 900];
    let mut set = tokio::task::JoinSet::new();
    for i in 0..500u64 {
        let c = client.clone();
        let big = big.clone();
        set.spawn(async move {
            if i % 2 == 0 {
                assert_eq!(&c.ping(big.clone()).await.unwrap()[..], &big[..]);
            } else {
                let a = c.get_auction(1).await.unwrap().unwrap();
                assert_eq!(a.auction_id, 1);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.in_flight_on_connection(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_and_not_retried_when_final() {
    let server = Server::start(&[]);
    let client = Client::connect(Config::new(server.addr.to_string()))
        .await
        .unwrap();
    client.open_auction(open(1)).await.unwrap();
    let bid = |amount, bid_id| BidRequest {
        auction_id: 1,
        bidder_id: 7,
        amount,
        bid_id,
    };
    assert!(client.bid(bid(10, 1)).await.unwrap().is_ok());
    // The same key again: the stored outcome, flagged.
    let again = client.bid(bid(10, 1)).await.unwrap();
    assert!(again.is_ok() && again.replayed && again.attempts == 1);
    // The same key with other fields: IDEMPOTENCY_CONFLICT, not retried.
    let e = client.bid(bid(11, 1)).await.unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::IdempotencyConflict));
    assert!(!e.is_retryable() && !e.outcome_unknown());
    // A zero key: MALFORMED.
    let e = client.bid(bid(12, 0)).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Server {
                code: ErrorCode::Malformed,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(client.get_auction(999).await.unwrap(), None);
    let e = client.subscribe(999).await.unwrap_err();
    assert!(
        matches!(e, Error::Refused(r) if r.status == Status::NotFound),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_retried_with_the_same_key() {
    // One shard holding one accepted key for 1 s: a second keyed bid gets
    // BUSY until the first key expires, and the client keeps retrying it.
    let server = Server::start(&[
        "--shards",
        "1",
        "--idempotency-max-keys",
        "1",
        "--idempotency-window",
        "1s",
    ]);
    let cfg = Config::new(server.addr.to_string()).retry(RetryPolicy {
        max_attempts: 100,
        max_elapsed: Duration::from_secs(30),
        ..RetryPolicy::default()
    });
    let client = Client::connect(cfg).await.unwrap();
    client.open_auction(open(1)).await.unwrap();
    let first = client
        .bid(BidRequest {
            auction_id: 1,
            bidder_id: 1,
            amount: 10,
            bid_id: 1,
        })
        .await
        .unwrap();
    assert!(first.is_ok());
    let second = client
        .bid(BidRequest {
            auction_id: 1,
            bidder_id: 2,
            amount: 20,
            bid_id: 2,
        })
        .await
        .unwrap();
    assert!(second.is_ok(), "{second:?}");
    assert!(second.attempts > 1, "BUSY at first: {second:?}");
    assert!(!second.replayed);

    // Without retries the BUSY comes back to the caller.
    let no_retry = Client::connect(Config::new(server.addr.to_string()).retry(RetryPolicy::none()))
        .await
        .unwrap();
    let e = no_retry
        .bid(BidRequest {
            auction_id: 1,
            bidder_id: 3,
            amount: 30,
            bid_id: 3,
        })
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::Busy), "{e}");
    assert!(e.is_retryable() && !e.outcome_unknown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_goes_in_hello() {
    let server = Server::start(&["--auth-token", "s3cret"]);
    let ok = Client::connect(Config::new(server.addr.to_string()).auth_token("s3cret"))
        .await
        .unwrap();
    assert_eq!(ok.welcome().unwrap().version, 1);
    assert_eq!(&ok.ping("hi").await.unwrap()[..], b"hi");
    let e = Client::connect(Config::new(server.addr.to_string()).auth_token("wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Server {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_spreads_load_and_pins_keys() {
    let server = Server::start(&["--io-threads", "2"]);
    let pool = Arc::new(
        Pool::connect(Config::new(server.addr.to_string()), 4)
            .await
            .unwrap(),
    );
    assert_eq!(pool.len(), 4);
    for a in 1..=8 {
        pool.for_key(a).open_auction(open(a)).await.unwrap();
    }
    let mut set = tokio::task::JoinSet::new();
    for t in 0..64u64 {
        let pool = pool.clone();
        set.spawn(async move {
            for i in 0..20u64 {
                let a = (t + i) % 8 + 1;
                // Any connection will do for reads.
                pool.get().get_auction(a).await.unwrap().unwrap();
                // Bids on one auction go over one connection, in order.
                let o = pool
                    .for_key(a)
                    .bid(BidRequest {
                        auction_id: a,
                        bidder_id: t + 1,
                        amount: 1 + i * 64 + t,
                        bid_id: t * 100 + i + 1,
                    })
                    .await
                    .unwrap();
                assert!(matches!(o.status(), Status::Ok | Status::Outbid));
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert!(std::ptr::eq(pool.for_key(5), pool.for_key(5)));
    let distinct: std::collections::HashSet<_> =
        (1..=8).map(|a| pool.for_key(a) as *const Client).collect();
    assert!(distinct.len() > 1, "keys spread over connections");
}
