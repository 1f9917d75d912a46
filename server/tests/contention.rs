//! Many clients racing on one auction or one sale: nothing oversold, the
//! final state equals what the clients were told.

mod common;

use std::sync::{Arc, Barrier};

use common::Server;
use gavel_protocol::Status;

#[test]
fn two_hundred_bidders_on_one_auction() {
    let s = Server::start(&[]);
    s.client().open_auction(1, 0, 1, 0).unwrap();
    let clients = 200u64;
    let bids = 25u64;
    let barrier = Arc::new(Barrier::new(clients as usize));
    let addr = s.addr;
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut cl = gavel_protocol::Client::connect(addr).unwrap();
                barrier.wait();
                let mut oks = Vec::new();
                for i in 0..bids {
                    // Distinct amounts across clients, so every maximum is unique.
                    let amount = 1 + i * clients + c;
                    let o = cl.bid(1, 1000 + c, amount, c * bids + i + 1).unwrap();
                    assert!(matches!(o.result.status, Status::Ok | Status::Outbid));
                    assert!(!o.replayed);
                    if o.result.status == Status::Ok {
                        oks.push(amount);
                    }
                }
                (oks, bids * clients + c)
            })
        })
        .collect();
    let mut ok_count = 0u64;
    let mut max_ok = 0u64;
    let mut max_sent = 0u64;
    for h in handles {
        let (oks, top) = h.join().unwrap();
        ok_count += oks.len() as u64;
        max_ok = max_ok.max(oks.iter().copied().max().unwrap_or(0));
        max_sent = max_sent.max(top);
    }
    let a = s.client().get_auction(1).unwrap().unwrap();
    assert_eq!(a.bid_count, ok_count, "bid_count equals the number of OKs");
    assert_eq!(
        a.high_bid, max_ok,
        "high bid is the highest acknowledged bid"
    );
    // The globally highest amount sent (last round of the top client) always wins:
    // nothing sent can beat it.
    let top_amount = 1 + (bids - 1) * clients + (clients - 1);
    assert_eq!(a.high_bid, top_amount);
    assert_eq!(a.high_bidder, 1000 + clients - 1);
    let _ = max_sent;
}

#[test]
fn three_hundred_buyers_race_for_one_hundred_units() {
    let s = Server::start(&[]);
    s.client().open_sale(1, 100, 2, 0, 0).unwrap();
    let buyers = 300u64;
    let barrier = Arc::new(Barrier::new(buyers as usize));
    let addr = s.addr;
    let handles: Vec<_> = (0..buyers)
        .map(|b| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut cl = gavel_protocol::Client::connect(addr).unwrap();
                barrier.wait();
                let mut held = 0u64;
                // Each buyer tries three times for one unit: at most two may succeed.
                for i in 0..3 {
                    let o = cl.buy(1, b + 1, 1, b * 10 + i + 1).unwrap();
                    match o.result.status {
                        Status::Ok => held += 1,
                        Status::SoldOut | Status::LimitExceeded => {}
                        s => panic!("unexpected {s:?}"),
                    }
                    assert!(o.result.aux <= 2);
                }
                held
            })
        })
        .collect();
    let per_buyer: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(per_buyer.iter().all(|h| *h <= 2), "nobody above the limit");
    assert_eq!(
        per_buyer.iter().sum::<u64>(),
        100,
        "exactly the stock was acknowledged"
    );
    let sale = s.client().get_sale(1).unwrap().unwrap();
    assert_eq!((sale.sold, sale.stock), (100, 100));
}
