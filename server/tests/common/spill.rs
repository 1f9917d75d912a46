//! Accepted keys past the in-memory cap leave memory for the store and are
//! found there: the same checks against SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use gavel_protocol::client::Outcome;
use gavel_protocol::{Client, ClientError, ErrorCode, ResultPayload, Status};

use super::Server;

/// Orders sent; the cap (`--idempotency-max-keys`) is far below it.
pub const ORDERS: u64 = 1_500;
pub const CAP: &str = "32";
const SKU: u64 = 1;
const AUCTION: u64 = 2;
const BIDS: u64 = 400;

/// BUSY means "not executed": retried with the same key until it is
/// answered (the materializer catching up frees room), within a deadline.
fn until_answered(what: &str, mut send: impl FnMut() -> Result<Outcome, ClientError>) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match send() {
            Ok(o) => return o,
            Err(ClientError::Server {
                code: ErrorCode::Busy,
                ..
            }) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn buy(c: &mut Client, order: u64) -> Outcome {
    until_answered(&format!("order {order}"), || c.buy(SKU, order, 1, order))
}

fn bid(c: &mut Client, bid_id: u64, amount: u64) -> Outcome {
    until_answered(&format!("bid {bid_id}"), || {
        c.bid(AUCTION, 7, amount, bid_id)
    })
}

/// Server args for the store `store`, with a tiny key cap on one shard.
pub fn args(store: &str) -> Vec<String> {
    [
        "--store",
        store,
        "--shards",
        "1",
        "--idempotency-max-keys",
        CAP,
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec()
}

/// Every order and bid is accepted although the cap is far below their
/// number, and every retry — by then answered from the store — replays
/// its original outcome: nothing sells twice. Returns the first outcomes.
pub fn accept_past_the_cap(s: &Server) -> (Vec<ResultPayload>, Vec<ResultPayload>) {
    let mut c = s.client();
    c.open_sale(SKU, 1_000_000, 0, 0, 0).unwrap();
    c.open_auction(AUCTION, 0, 1, 0).unwrap();
    let orders: Vec<ResultPayload> = (1..=ORDERS).map(|o| buy(&mut c, o).result).collect();
    let bids: Vec<ResultPayload> = (1..=BIDS).map(|b| bid(&mut c, b, b * 10).result).collect();
    for r in orders.iter().chain(&bids) {
        assert_eq!(r.status, Status::Ok);
    }
    check_replays(s, &orders, &bids);
    let metrics = s.http_get("/metrics").1;
    let found = metric(
        &metrics,
        "gavel_idempotency_lookups_total{result=\"found\"}",
    );
    assert!(
        found >= (ORDERS + BIDS - 200) as f64,
        "retries were answered from the store: found={found}\n{metrics}"
    );
    assert!(metric(&metrics, "gavel_idempotency_keys") <= 2.0 * CAP.parse::<f64>().unwrap());
    (orders, bids)
}

/// Every order and bid replays its first outcome; a reused key with other
/// fields is a conflict even when the key is only in the store; the sale
/// sold each order once.
pub fn check_replays(s: &Server, orders: &[ResultPayload], bids: &[ResultPayload]) {
    let mut c = s.client();
    for (i, first) in orders.iter().enumerate() {
        let order = i as u64 + 1;
        let again = buy(&mut c, order);
        assert!(again.replayed, "order {order} replays");
        assert_eq!(again.result, *first, "order {order}: original outcome");
    }
    for (i, first) in bids.iter().enumerate() {
        let b = i as u64 + 1;
        let again = bid(&mut c, b, b * 10);
        assert!(again.replayed, "bid {b} replays");
        assert_eq!(again.result, *first, "bid {b}: original outcome");
    }
    match c.bid(AUCTION, 7, 99_999_999, 1) {
        Err(ClientError::Server {
            code: ErrorCode::IdempotencyConflict,
            ..
        }) => {}
        other => panic!("bid 1 reused with another amount: {other:?}"),
    }
    let sale = c.get_sale(SKU).unwrap().unwrap();
    assert_eq!(sale.sold, orders.len() as u64, "each order sold once");
    let a = c.get_auction(AUCTION).unwrap().unwrap();
    assert_eq!(a.bid_count, bids.len() as u64, "each bid counted once");
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}
