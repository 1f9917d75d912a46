//! Crash-test helpers shared by the durability tests: a client that streams
//! bids and purchases, records every acknowledgement, SIGKILLs the server
//! mid-stream, and checks the state after each restart.

use std::collections::HashMap;

use super::Server;
use gavel_protocol::{BidRequest, BuyRequest, Client, Request, Response, Status};

pub const AUCTION: u64 = 1;
pub const SKU: u64 = 1;
const STOCK: u64 = 1_000_000;

#[derive(Clone, Copy)]
enum Sent {
    Bid { bid_id: u64, amount: u64 },
    Buy { order_id: u64, qty: u32 },
}

/// What the client has sent and what the server acknowledged, across restarts.
#[derive(Default)]
pub struct Ledger {
    /// Every bid sent, in order: amounts strictly rise, so each one that the
    /// server executes is accepted and the committed bids are a prefix.
    sent_bids: Vec<(u64, u64)>,
    acked_bids: Vec<(u64, u64)>,
    sent_units: u64,
    acked_orders: Vec<(u64, u32)>,
    next_id: u64,
}

impl Ledger {
    fn acked_units(&self) -> u64 {
        self.acked_orders.iter().map(|o| o.1 as u64).sum()
    }
}

pub fn bid(bid_id: u64, amount: u64) -> Request {
    Request::Bid(BidRequest {
        auction_id: AUCTION,
        bidder_id: 1 + amount % 50,
        amount,
        bid_id,
    })
}

pub fn buy(order_id: u64, qty: u32) -> Request {
    Request::Buy(BuyRequest {
        sku_id: SKU,
        buyer_id: 1 + order_id % 97,
        quantity: qty,
        order_id,
    })
}

/// After a restart: every acknowledged bid and order is in the state, and
/// nothing that was never sent is.
pub fn verify(c: &mut Client, l: &mut Ledger) {
    let a = c.get_auction(AUCTION).unwrap().expect("auction survived");
    let committed = l.sent_bids.iter().take_while(|b| b.1 <= a.high_bid).count() as u64;
    assert_eq!(
        a.bid_count, committed,
        "bid_count is the committed prefix of the bids sent"
    );
    // Bids sent but not committed before the kill are gone for good (they
    // were never acknowledged); the next cycle's bids follow the survivors.
    l.sent_bids.truncate(committed as usize);
    if let Some(&(_, last_acked)) = l.acked_bids.last() {
        assert!(
            a.high_bid >= last_acked,
            "high bid {} lost the acknowledged {last_acked}",
            a.high_bid
        );
    }
    if let Some(&(_, max_sent)) = l.sent_bids.last() {
        assert!(a.high_bid <= max_sent);
    }
    let s = c.get_sale(SKU).unwrap().expect("sale survived");
    assert!(
        s.sold >= l.acked_units() && s.sold <= l.sent_units,
        "sold {} outside [acked {}, sent {}]",
        s.sold,
        l.acked_units(),
        l.sent_units
    );
    l.sent_units = s.sold;
    // Every acknowledged request replays its original outcome.
    for &(bid_id, amount) in &l.acked_bids {
        c.send(&bid(bid_id, amount));
    }
    for &(order_id, qty) in &l.acked_orders {
        c.send(&buy(order_id, qty));
    }
    c.flush().unwrap();
    for _ in 0..l.acked_bids.len() + l.acked_orders.len() {
        let f = c.recv().unwrap();
        assert!(f.replayed(), "{f:?}");
        assert!(
            matches!(f.body, Response::Result(r) if r.status == Status::Ok),
            "{f:?}"
        );
    }
}

/// Streams bids and purchases with 64 in flight; after `kill_after`
/// acknowledgements the server is SIGKILLed while requests are in flight.
fn stream_then_kill(s: &mut Server, l: &mut Ledger, kill_after: usize) {
    let mut c = s.client();
    let start_high = l.sent_bids.last().map_or(0, |b| b.1);
    let mut amount = start_high;
    let mut inflight: HashMap<u32, Sent> = HashMap::new();
    let mut acked = 0usize;
    let mut killed = false;
    loop {
        while !killed && inflight.len() < 64 {
            l.next_id += 1;
            let id = l.next_id;
            let (req, sent) = if id.is_multiple_of(3) {
                let qty = 1 + (id % 3) as u32;
                l.sent_units += qty as u64;
                (buy(id, qty), Sent::Buy { order_id: id, qty })
            } else {
                amount += 1 + id % 5;
                l.sent_bids.push((id, amount));
                (bid(id, amount), Sent::Bid { bid_id: id, amount })
            };
            inflight.insert(c.send(&req), sent);
        }
        if c.flush().is_err() {
            break;
        }
        let f = match c.recv() {
            Ok(f) => f,
            Err(_) => break,
        };
        let sent = inflight
            .remove(&f.request_id)
            .expect("reply to a request sent");
        match (f.body, sent) {
            (Response::Result(r), Sent::Bid { bid_id, amount }) => {
                assert_eq!(r.status, Status::Ok, "rising bids are accepted");
                assert_eq!(r.value, amount);
                l.acked_bids.push((bid_id, amount));
            }
            (Response::Result(r), Sent::Buy { order_id, qty }) => {
                assert_eq!(r.status, Status::Ok);
                l.acked_orders.push((order_id, qty));
            }
            (other, _) => panic!("unexpected reply {other:?}"),
        }
        acked += 1;
        if acked == kill_after {
            s.kill9();
            killed = true;
        }
    }
    assert!(killed, "the server died before it was killed");
}

pub fn crash_cycles(store: &str) {
    let mut l = Ledger::default();
    for cycle in 0..6 {
        let mut s = Server::start(&["--store", store]);
        let mut c = s.client();
        if cycle == 0 {
            assert_eq!(
                c.open_auction(AUCTION, 0, 1, 0).unwrap().result.status,
                Status::Ok
            );
            assert_eq!(
                c.open_sale(SKU, STOCK, 0, 0, 0).unwrap().result.status,
                Status::Ok
            );
        } else {
            verify(&mut c, &mut l);
        }
        if cycle == 5 {
            break;
        }
        stream_then_kill(&mut s, &mut l, 1500 + cycle * 500);
    }
    assert!(l.acked_bids.len() > 5000, "{}", l.acked_bids.len());
}

pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gavel-{tag}-{}-{}",
        std::process::id(),
        super::now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
