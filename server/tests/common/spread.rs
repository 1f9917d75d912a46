//! Crash test over many auctions and SKUs: a client streams bids (rising
//! per auction) and purchases spread over thousands of auctions and
//! hundreds of SKUs, records every acknowledgement, SIGKILLs the server
//! mid-stream, restarts it and checks the state: every acknowledged bid and
//! order is there and replays, nothing never sent is, nothing oversold.

use std::collections::HashMap;

use super::Server;
use gavel_protocol::{BidRequest, BuyRequest, Client, Request, Response, Status};

pub const AUCTIONS: u64 = 2_000;
pub const SKUS: u64 = 200;
const STOCK: u64 = 1_000_000;

#[derive(Clone, Copy)]
enum Sent {
    Bid {
        auction: u64,
        bid_id: u64,
        amount: u64,
    },
    Buy {
        sku: u64,
        order_id: u64,
        qty: u32,
    },
}

/// What was sent and acknowledged, across restarts.
#[derive(Default)]
pub struct Ledger {
    /// Per auction, every bid sent in order (amounts rise, so each bid the
    /// server executes is accepted and the committed bids are a prefix).
    sent_bids: HashMap<u64, Vec<(u64, u64)>>,
    acked_bids: Vec<(u64, u64, u64)>,
    /// Per SKU: units sent and acknowledged.
    sent_units: HashMap<u64, u64>,
    acked_units: HashMap<u64, u64>,
    acked_orders: Vec<(u64, u64, u32)>,
    next_id: u64,
}

fn bid(auction: u64, bid_id: u64, amount: u64) -> Request {
    Request::Bid(BidRequest {
        auction_id: auction,
        bidder_id: 1 + amount % 50,
        amount,
        bid_id,
    })
}

fn buy(sku: u64, order_id: u64, qty: u32) -> Request {
    Request::Buy(BuyRequest {
        sku_id: sku,
        buyer_id: 1 + order_id % 97,
        quantity: qty,
        order_id,
    })
}

impl Ledger {
    /// The next request to send, recorded as sent.
    fn next(&mut self) -> (Request, Sent) {
        self.next_id += 1;
        let id = self.next_id;
        if id.is_multiple_of(3) {
            let (sku, qty) = (1 + id % SKUS, 1 + (id % 3) as u32);
            *self.sent_units.entry(sku).or_default() += qty as u64;
            let sent = Sent::Buy {
                sku,
                order_id: id,
                qty,
            };
            return (buy(sku, id, qty), sent);
        }
        let auction = 1 + (id * 7919) % AUCTIONS;
        let bids = self.sent_bids.entry(auction).or_default();
        let amount = bids.last().map_or(0, |b| b.1) + 1 + id % 5;
        bids.push((id, amount));
        let sent = Sent::Bid {
            auction,
            bid_id: id,
            amount,
        };
        (bid(auction, id, amount), sent)
    }

    fn acked(&mut self, sent: Sent, body: Response) {
        let Response::Result(r) = body else {
            panic!("unexpected reply {body:?}");
        };
        assert_eq!(
            r.status,
            Status::Ok,
            "rising bids and ample stock: accepted"
        );
        match sent {
            Sent::Bid {
                auction,
                bid_id,
                amount,
            } => {
                assert_eq!(r.value, amount);
                self.acked_bids.push((auction, bid_id, amount));
            }
            Sent::Buy { sku, order_id, qty } => {
                *self.acked_units.entry(sku).or_default() += qty as u64;
                self.acked_orders.push((sku, order_id, qty));
            }
        }
    }
}

/// Opens every auction and sale, pipelined.
fn open_all(c: &mut Client) {
    for a in 1..=AUCTIONS {
        c.send(&Request::OpenAuction(gavel_protocol::OpenAuctionRequest {
            auction_id: a,
            reserve: 0,
            min_increment: 1,
            ends_at_ms: 0,
        }));
    }
    for s in 1..=SKUS {
        c.send(&Request::OpenSale(gavel_protocol::OpenSaleRequest {
            sku_id: s,
            stock: STOCK,
            per_buyer_limit: 0,
            starts_at_ms: 0,
            ends_at_ms: 0,
        }));
    }
    c.flush().unwrap();
    for _ in 0..AUCTIONS + SKUS {
        let f = c.recv().unwrap();
        assert!(
            matches!(f.body, Response::Result(r) if r.status == Status::Ok),
            "{f:?}"
        );
    }
}

/// After a restart: per auction, bid_count is the committed prefix of the
/// bids sent and the high bid is at least the last acknowledged one; per
/// SKU, sold lies between the units acknowledged and the units sent.
fn verify_state(c: &mut Client, l: &mut Ledger) {
    let mut asked = HashMap::new();
    for &a in l.sent_bids.keys() {
        asked.insert(c.send(&Request::GetAuction { auction_id: a }), a);
    }
    for &s in l.sent_units.keys() {
        asked.insert(c.send(&Request::GetSale { sku_id: s }), s);
    }
    c.flush().unwrap();
    for _ in 0..asked.len() {
        let f = c.recv().unwrap();
        let key = asked[&f.request_id];
        match f.body {
            Response::Auction(a) => {
                let bids = l.sent_bids.get_mut(&key).unwrap();
                let committed = bids.iter().take_while(|b| b.1 <= a.high_bid).count();
                assert_eq!(
                    a.bid_count, committed as u64,
                    "auction {key}: committed prefix"
                );
                bids.truncate(committed);
                let last_acked = l
                    .acked_bids
                    .iter()
                    .filter(|b| b.0 == key)
                    .map(|b| b.2)
                    .max();
                assert!(
                    a.high_bid >= last_acked.unwrap_or(0),
                    "auction {key} lost an ack"
                );
            }
            Response::Sale(s) => {
                let acked = l.acked_units.get(&key).copied().unwrap_or(0);
                let sent = l.sent_units[&key];
                assert!(
                    s.sold >= acked && s.sold <= sent,
                    "sku {key}: sold {} outside [{acked}, {sent}]",
                    s.sold
                );
                l.sent_units.insert(key, s.sold);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Every acknowledged request replays its original outcome.
fn verify_replays(c: &mut Client, l: &Ledger) {
    for &(a, id, amount) in &l.acked_bids {
        c.send(&bid(a, id, amount));
    }
    for &(s, id, qty) in &l.acked_orders {
        c.send(&buy(s, id, qty));
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

/// Streams with 128 in flight; SIGKILLs the server after `kill_after`
/// acknowledgements, requests still in flight. `before_kill` runs first
/// (e.g. to check the materializer is behind).
fn stream_then_kill(
    s: &mut Server,
    l: &mut Ledger,
    kill_after: usize,
    before_kill: &dyn Fn(&Server),
) {
    let mut c = s.client();
    let mut inflight: HashMap<u32, Sent> = HashMap::new();
    let (mut acked, mut killed) = (0usize, false);
    loop {
        while !killed && inflight.len() < 128 {
            let (req, sent) = l.next();
            inflight.insert(c.send(&req), sent);
        }
        if c.flush().is_err() {
            break;
        }
        let Ok(f) = c.recv() else { break };
        let sent = inflight
            .remove(&f.request_id)
            .expect("reply to a request sent");
        l.acked(sent, f.body);
        acked += 1;
        if acked == kill_after {
            before_kill(s);
            s.kill9();
            killed = true;
        }
    }
    assert!(killed, "the server died before it was killed");
}

/// Five SIGKILLs mid-stream, each followed by a restart and a full check.
pub fn crash_cycles(args: &[&str], before_kill: &dyn Fn(&Server)) {
    let mut l = Ledger::default();
    for cycle in 0..6 {
        let mut s = Server::start(args);
        let mut c = s.client();
        if cycle == 0 {
            open_all(&mut c);
        } else {
            verify_state(&mut c, &mut l);
            verify_replays(&mut c, &l);
        }
        if cycle == 5 {
            break;
        }
        stream_then_kill(&mut s, &mut l, 3_000 + cycle * 500, before_kill);
    }
    assert!(l.acked_bids.len() > 10_000, "{}", l.acked_bids.len());
}
