//! The server restarted mid-stream with a durable store: every keyed request
//! (BID, BUY) ends with exactly one outcome, the state counts each accepted
//! one exactly once, and the requests acknowledged before the restart are
//! replayed (flag REPLAYED, same result) when sent again after it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{temp_dir, Server};
use gavel_client::{Backoff, Client, Config, Outcome, RetryPolicy};
use gavel_protocol::{BidRequest, BuyRequest, OpenAuctionRequest, OpenSaleRequest, Request};

const BIDDERS: u64 = 16;
const BUYERS: u64 = 16;
const PER_TASK: u64 = 60;

#[derive(Clone, Copy)]
struct Done {
    req: Keyed,
    outcome: Outcome,
    /// Received before the server was told to stop: acknowledged by the first
    /// server, so durable.
    before: bool,
}

#[derive(Clone, Copy)]
enum Keyed {
    Bid(BidRequest),
    Buy(BuyRequest),
}

fn patient(addr: &str) -> Config {
    Config::new(addr)
        .request_timeout(Duration::from_secs(5))
        .reconnect_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(300),
            multiplier: 2.0,
        })
        .retry(RetryPolicy {
            max_attempts: 1_000,
            max_elapsed: Duration::from_secs(90),
            backoff: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(300),
                multiplier: 2.0,
            },
            unkeyed: true,
        })
}

async fn restart_mid_stream(graceful: bool) {
    let dir = temp_dir(if graceful { "term" } else { "kill9" });
    let store = format!("sqlite:{}/g.db", dir.display());
    let mut server = Server::start(&["--store", &store]);
    let client = Client::connect(patient(&server.addr.to_string()))
        .await
        .unwrap();
    for a in 1..=BIDDERS {
        let o = client
            .open_auction(OpenAuctionRequest {
                auction_id: a,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            })
            .await
            .unwrap();
        assert!(o.is_ok());
    }
    let o = client
        .open_sale(OpenSaleRequest {
            sku_id: 1,
            stock: 1_000_000,
            per_buyer_limit: 0,
            starts_at_ms: 0,
            ends_at_ms: 0,
        })
        .await
        .unwrap();
    assert!(o.is_ok());

    let stopping = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..BIDDERS + BUYERS {
        let c = client.clone();
        let stopping = stopping.clone();
        let completed = completed.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..PER_TASK {
                let req = if t < BIDDERS {
                    // Each bidder on its own auction, always raising: every
                    // bid is accepted exactly once.
                    Keyed::Bid(BidRequest {
                        auction_id: t + 1,
                        bidder_id: t + 1,
                        amount: i + 1,
                        bid_id: i + 1,
                    })
                } else {
                    Keyed::Buy(BuyRequest {
                        sku_id: 1,
                        buyer_id: t + 1,
                        quantity: 1,
                        order_id: t * 10_000 + i + 1,
                    })
                };
                let r = match req {
                    Keyed::Bid(b) => c.bid(b).await,
                    Keyed::Buy(b) => c.buy(b).await,
                };
                let before = !stopping.load(Ordering::SeqCst);
                let outcome = r.unwrap_or_else(|e| panic!("task {t} request {i}: {e}"));
                assert!(outcome.is_ok(), "task {t} request {i}: {outcome:?}");
                completed.fetch_add(1, Ordering::Relaxed);
                done.push(Done {
                    req,
                    outcome,
                    before,
                });
            }
            done
        }));
    }

    // Let about a third go through, then stop the server under load.
    let total = (BIDDERS + BUYERS) * PER_TASK;
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed.load(Ordering::Relaxed) < total / 3 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stopping.store(true, Ordering::SeqCst);
    let at_stop = completed.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        if graceful {
            server.restart_term()
        } else {
            server.restart_kill9()
        }
    });

    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    // Every keyed request ended with exactly one outcome.
    assert_eq!(all.len() as u64, total);
    assert!(at_stop < total, "the restart happened mid-stream");
    assert!(client.reconnects() >= 1, "the client reconnected");
    let retried = all.iter().filter(|d| d.outcome.attempts > 1).count();
    let replayed = all.iter().filter(|d| d.outcome.replayed).count();
    eprintln!(
        "{total} keyed requests, {at_stop} done before the stop, {retried} retried, \
         {replayed} answered by a replay, {} reconnect(s)",
        client.reconnects()
    );

    // The state counts each accepted request exactly once.
    for a in 1..=BIDDERS {
        let info = client.get_auction(a).await.unwrap().unwrap();
        assert_eq!(
            (info.bid_count, info.high_bid, info.high_bidder),
            (PER_TASK, PER_TASK, a),
            "auction {a}"
        );
    }
    let sale = client.get_sale(1).await.unwrap().unwrap();
    assert_eq!(sale.sold, BUYERS * PER_TASK);

    // Acknowledged before the restart → replayed after it, byte for byte.
    let before: Vec<_> = all.iter().filter(|d| d.before).copied().collect();
    assert!(!before.is_empty());
    for d in &before {
        let again = match d.req {
            Keyed::Bid(b) => client.call(Request::Bid(b)).await.unwrap(),
            Keyed::Buy(b) => client.call(Request::Buy(b)).await.unwrap(),
        };
        assert!(again.replayed, "not a replay: {:?}", again);
        assert_eq!(
            again.response,
            gavel_protocol::Response::Result(d.outcome.result)
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_stream() {
    restart_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_gracefully_mid_stream() {
    restart_mid_stream(true).await;
}
