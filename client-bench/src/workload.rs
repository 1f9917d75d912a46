//! What each connection asks for: the next operation, its ids and amounts.
//!
//! * Auctions and SKUs are picked per request, uniformly or Zipf-skewed.
//! * `--bidding climb`: bid amounts come from one shared counter per auction
//!   that advances by [`AMOUNT_STEP`] per bid, plus a random jitter in
//!   `0..2*AMOUNT_STEP`. Bids therefore keep rising, yet a bid can land at or
//!   below the one issued just before it — about one in eight — or arrive
//!   after a higher one from another connection, so `OUTBID` happens too
//!   (often, when the server interleaves connections freely).
//! * `--bidding chase`: a bid is `1 + jitter` above the highest price any
//!   reply has shown for its auction so far (shared by all connections, like a
//!   ticker every bidder watches); while a bid is in flight the price moves
//!   on, so most of a hot auction's bids are stale and lose.
//! * Idempotency keys (`bid_id`, `order_id`) are `(connection + 1) << 32 |
//!   (sequence + 1)`: non-zero and unique within a run; the server scopes keys
//!   to their auction/SKU, whose ids are unique per run (`--id-base`).
//! * Bidder and buyer ids are the connection index plus one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gavel_protocol::{BidRequest, BuyRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::{Bidding, Plan, Skew, Workload};

/// How far the shared amount counter of an auction advances per bid.
pub const AMOUNT_STEP: u64 = 4;

/// One request of the load phase. `index` is the auction's or sale's position
/// in the run (0-based), used for the per-key expectations of `--verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Bid { index: u32, req: BidRequest },
    Buy { index: u32, req: BuyRequest },
}

/// Picks a key index in `0..n` according to a [`Skew`].
#[derive(Debug, Clone)]
pub struct KeyPicker {
    n: u32,
    /// Cumulative probabilities for Zipf; `None` for uniform.
    cdf: Option<Vec<f64>>,
    per_conn: bool,
}

impl KeyPicker {
    pub fn new(n: u32, skew: Skew) -> KeyPicker {
        let n = n.max(1);
        let cdf = match skew {
            Skew::Uniform | Skew::PerConn => None,
            Skew::Zipf(_) if n == 1 => None,
            Skew::Zipf(s) => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (0..n)
                    .map(|i| {
                        acc += 1.0 / f64::from(i + 1).powf(s);
                        acc
                    })
                    .collect();
                for v in &mut cdf {
                    *v /= acc;
                }
                Some(cdf)
            }
        };
        KeyPicker {
            n,
            cdf,
            per_conn: skew == Skew::PerConn,
        }
    }

    pub fn len(&self) -> u32 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// A key for connection `conn`'s next request.
    #[inline]
    pub fn pick<R: Rng>(&self, conn: u32, rng: &mut R) -> u32 {
        if self.per_conn {
            return conn % self.n;
        }
        match &self.cdf {
            None if self.n == 1 => 0,
            None => rng.gen_range(0..self.n),
            Some(cdf) => {
                let u: f64 = rng.gen();
                (cdf.partition_point(|&c| c <= u) as u32).min(self.n - 1)
            }
        }
    }
}

/// State shared by every connection's generator.
#[derive(Debug)]
pub struct WorkloadShared {
    workload: Workload,
    id_base: u64,
    auctions: KeyPicker,
    skus: KeyPicker,
    bidding: Bidding,
    /// Per auction: the amount counter (climb) or the highest price seen in
    /// a reply (chase).
    amounts: Vec<AtomicU64>,
    malformed_every: Option<u64>,
    seed: u64,
    conn_offset: u32,
}

impl WorkloadShared {
    pub fn new(plan: &Plan) -> Arc<WorkloadShared> {
        let n_amounts = if plan.workload.uses_auctions() {
            plan.auctions as usize
        } else {
            0
        };
        Arc::new(WorkloadShared {
            workload: plan.workload,
            id_base: plan.id_base,
            auctions: KeyPicker::new(plan.auctions, plan.skew),
            skus: KeyPicker::new(plan.skus, plan.skew),
            bidding: plan.bidding,
            amounts: (0..n_amounts).map(|_| AtomicU64::new(0)).collect(),
            malformed_every: plan.malformed_every,
            seed: plan.seed,
            conn_offset: plan.conn_offset,
        })
    }

    /// The generator of connection `conn` (numbered from --conn-offset).
    pub fn generator(self: &Arc<Self>, conn: u32) -> OpGen {
        let conn = conn.saturating_add(self.conn_offset);
        let seed = self
            .seed
            .wrapping_add(u64::from(conn).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        OpGen {
            conn,
            seq: 0,
            rng: SmallRng::seed_from_u64(seed),
            shared: self.clone(),
        }
    }
}

/// Produces the requests of one connection.
#[derive(Debug)]
pub struct OpGen {
    conn: u32,
    seq: u64,
    rng: SmallRng,
    shared: Arc<WorkloadShared>,
}

impl OpGen {
    /// Requests generated so far.
    pub fn generated(&self) -> u64 {
        self.seq
    }

    /// A RESULT to a bid showed the auction's high bid after it (`value`):
    /// with `--bidding chase`, the price later bids chase.
    #[inline]
    pub fn observe(&self, op: &Op, value: u64) {
        if let (Bidding::Chase, Op::Bid { index, .. }) = (self.shared.bidding, op) {
            if let Some(seen) = self.shared.amounts.get(*index as usize) {
                seen.fetch_max(value, Ordering::Relaxed);
            }
        }
    }

    pub fn next_op(&mut self) -> Op {
        let sh = &*self.shared;
        let seq = self.seq;
        self.seq += 1;
        let key = match sh.malformed_every {
            Some(n) if (seq + 1).is_multiple_of(n) => 0,
            _ => (u64::from(self.conn) + 1) << 32 | ((seq + 1) & 0xffff_ffff),
        };
        let who = u64::from(self.conn) + 1;
        let bid = match sh.workload {
            Workload::Bids => true,
            Workload::Buys => false,
            Workload::Mixed => self.rng.gen_bool(0.5),
        };
        if bid {
            let index = sh.auctions.pick(self.conn, &mut self.rng);
            let counter = &sh.amounts[index as usize];
            let base = match sh.bidding {
                Bidding::Climb => counter.fetch_add(AMOUNT_STEP, Ordering::Relaxed),
                Bidding::Chase => counter.load(Ordering::Relaxed),
            };
            let amount = base + 1 + self.rng.gen_range(0..2 * AMOUNT_STEP);
            Op::Bid {
                index,
                req: BidRequest {
                    auction_id: sh.id_base + u64::from(index),
                    bidder_id: who,
                    amount,
                    bid_id: key,
                },
            }
        } else {
            let index = sh.skus.pick(self.conn, &mut self.rng);
            Op::Buy {
                index,
                req: BuyRequest {
                    sku_id: sh.id_base + u64::from(index),
                    buyer_id: who,
                    quantity: 1,
                    order_id: key,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BenchConfig;
    use clap::Parser;
    use std::collections::HashSet;

    fn plan(args: &[&str]) -> Plan {
        let mut v = vec!["client-bench", "--id-base", "1000", "--seed", "7"];
        v.extend_from_slice(args);
        BenchConfig::try_parse_from(v).unwrap().plan().unwrap()
    }

    #[test]
    fn zipf_prefers_low_indices_and_covers_range() {
        let p = KeyPicker::new(100, Skew::Zipf(1.2));
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = vec![0u32; 100];
        for _ in 0..100_000 {
            counts[p.pick(0, &mut rng) as usize] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[99]);
        assert!(counts[0] > 20_000, "{}", counts[0]);
        let u = KeyPicker::new(10, Skew::Uniform);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[u.pick(0, &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(KeyPicker::new(1, Skew::Zipf(2.0)).pick(0, &mut rng), 0);
    }

    #[test]
    fn keys_unique_nonzero_and_amounts_rise() {
        let plan = plan(&["--auctions", "1"]);
        let sh = WorkloadShared::new(&plan);
        let mut keys = HashSet::new();
        let mut last_base = 0;
        let mut below_previous = 0;
        let mut prev = 0;
        for conn in 0..3 {
            let mut g = sh.generator(conn);
            for _ in 0..1000 {
                let Op::Bid { index, req } = g.next_op() else {
                    panic!("bids workload made a buy")
                };
                assert_eq!(index, 0);
                assert_eq!(req.auction_id, 1000);
                assert_eq!(req.bidder_id, u64::from(conn) + 1);
                assert!(req.bid_id != 0 && keys.insert(req.bid_id));
                assert!(req.amount > last_base);
                last_base = req.amount.saturating_sub(2 * AMOUNT_STEP);
                if req.amount <= prev {
                    below_previous += 1;
                }
                prev = req.amount;
            }
        }
        // Roughly one in eight bids does not beat the one before it.
        assert!((200..=600).contains(&below_previous), "{below_previous}");
    }

    #[test]
    fn conn_offsets_keep_processes_apart() {
        let a = WorkloadShared::new(&plan(&["--auctions", "1", "--connections", "4"]));
        let b = WorkloadShared::new(&plan(&[
            "--auctions",
            "1",
            "--connections",
            "4",
            "--conn-offset",
            "4",
        ]));
        let mut keys = HashSet::new();
        let mut bidders = HashSet::new();
        for sh in [&a, &b] {
            for conn in 0..4 {
                let mut g = sh.generator(conn);
                let Op::Bid { req, .. } = g.next_op() else {
                    panic!("bids workload made a buy")
                };
                assert!(keys.insert(req.bid_id), "key {} twice", req.bid_id);
                bidders.insert(req.bidder_id);
            }
        }
        assert_eq!(bidders.len(), 8);
        let too_far = [
            "client-bench",
            "--conn-offset",
            "4294967000",
            "--connections",
            "1000",
        ];
        assert!(BenchConfig::try_parse_from(too_far)
            .unwrap()
            .plan()
            .is_err());
    }

    #[test]
    fn per_conn_keeps_each_connection_on_its_key() {
        let p = KeyPicker::new(4, Skew::PerConn);
        let mut rng = SmallRng::seed_from_u64(1);
        for conn in 0..10 {
            for _ in 0..20 {
                assert_eq!(p.pick(conn, &mut rng), conn % 4);
            }
        }
    }

    #[test]
    fn chase_bids_just_above_the_price_seen() {
        let plan = plan(&["--auctions", "1", "--bidding", "chase"]);
        let sh = WorkloadShared::new(&plan);
        let mut g = sh.generator(0);
        let h = sh.generator(1);
        let amount = |g: &mut OpGen| match g.next_op() {
            Op::Bid { req, .. } => req.amount,
            Op::Buy { .. } => panic!("bids workload made a buy"),
        };
        // Nothing seen yet: just above zero, and the price does not move by
        // issuing bids (only replies move it).
        for _ in 0..100 {
            assert!((1..=2 * AMOUNT_STEP).contains(&amount(&mut g)));
        }
        // Another connection's reply shows 1000: everyone chases it.
        let op = g.next_op();
        h.observe(&op, 1000);
        h.observe(&op, 400); // an older, lower price never lowers it
        for _ in 0..100 {
            assert!((1001..=1000 + 2 * AMOUNT_STEP).contains(&amount(&mut g)));
        }
    }

    #[test]
    fn mixed_makes_both_and_malformed_injects_zero_keys() {
        let plan = plan(&[
            "--workload",
            "mixed",
            "--skus",
            "3",
            "--malformed-every",
            "4",
        ]);
        let sh = WorkloadShared::new(&plan);
        let mut g = sh.generator(0);
        let (mut bids, mut buys, mut zero) = (0, 0, 0);
        for _ in 0..400 {
            match g.next_op() {
                Op::Bid { req, .. } => {
                    bids += 1;
                    zero += (req.bid_id == 0) as u32;
                }
                Op::Buy { index, req } => {
                    buys += 1;
                    assert!(index < 3);
                    assert_eq!(req.quantity, 1);
                    zero += (req.order_id == 0) as u32;
                }
            }
        }
        assert!(bids > 100 && buys > 100);
        assert_eq!(zero, 100);
        assert_eq!(g.generated(), 400);
    }
}
