//! Honest accounting of a run.
//!
//! Every issued request ends in exactly one bucket: `succeeded` (a RESULT
//! arrived: any business outcome), `failed` (an ERROR frame arrived; counted
//! by code), `unexpected` (some other reply arrived) or `lost` (no reply: the
//! connection closed, broke or timed out first). `failed` requests were not
//! executed, except those answered `IN_DOUBT` (also counted in `in_doubt`):
//! they may have been applied, so their outcome is unknown, like a lost
//! request's. Latencies are recorded only
//! for requests that got a reply. Each driver thread keeps its own [`Stats`];
//! they are merged at the end. [`Live`] holds the few shared counters the
//! progress line reads while the run is going. [`PerSecond`] counts replies
//! by the second of the run they arrived in (for `--report`'s throughput plot).

use std::sync::atomic::{AtomicU64, Ordering};

use gavel_protocol::{ErrorCode, Status};
use hdrhistogram::Histogram;

use crate::workload::Op;

/// Highest latency the histogram tracks precisely (one hour, in µs); larger
/// values are clamped to it.
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// Size of arrays indexed by the numeric ERROR code (0 unused).
pub const ERROR_SLOTS: usize = ErrorCode::ALL.len() + 1;

/// What `--verify` expects one auction to look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuctionExpect {
    /// Bids acknowledged with OK.
    pub ok_bids: u64,
    /// Highest amount acknowledged with OK (0 if none).
    pub max_ok_amount: u64,
}

/// What `--verify` expects one sale to look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaleExpect {
    /// Units of BUYs acknowledged with OK.
    pub ok_units: u64,
}

/// Per-key expectations, indexed like the run's auctions and sales.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    pub auctions: Vec<AuctionExpect>,
    pub sales: Vec<SaleExpect>,
}

impl Expectations {
    pub fn new(auctions: usize, sales: usize) -> Expectations {
        Expectations {
            auctions: vec![AuctionExpect::default(); auctions],
            sales: vec![SaleExpect::default(); sales],
        }
    }

    fn merge(&mut self, o: &Expectations) {
        for (a, b) in self.auctions.iter_mut().zip(&o.auctions) {
            a.ok_bids += b.ok_bids;
            a.max_ok_amount = a.max_ok_amount.max(b.max_ok_amount);
        }
        for (a, b) in self.sales.iter_mut().zip(&o.sales) {
            a.ok_units += b.ok_units;
        }
    }
}

/// Counters of one driver thread, or of the whole run once merged.
#[derive(Debug, Clone)]
pub struct Stats {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub unexpected: u64,
    pub lost: u64,
    pub connections_opened: u64,
    pub connect_failures: u64,
    pub handshake_failures: u64,
    /// Connections abandoned after `--timeout-secs` without progress.
    pub timeouts: u64,
    /// Connections closed because the server's bytes could not be decoded.
    pub protocol_errors: u64,
    /// Connections the server closed (or reset) before we were done with them.
    pub closed_by_server: u64,
    /// RESULTs flagged REPLAYED (a run with unique keys expects none).
    pub replayed: u64,
    /// Server pushes received (ignored otherwise).
    pub pushes: u64,
    /// Replies whose tag matched no outstanding request.
    pub unmatched: u64,
    /// Requests answered ERROR `IN_DOUBT` (also in `failed`): they may have
    /// been applied, so `--verify` counts them as unknown outcomes.
    pub in_doubt: u64,
    /// ERROR frames by code, indexed by the numeric code (0 unused).
    pub errors: [u64; ERROR_SLOTS],
    /// The first connect error seen, for the report.
    pub first_connect_error: Option<String>,
    /// The first undecodable-reply error seen, for the report.
    pub first_protocol_error: Option<String>,
    /// RESULTs by status, indexed by the numeric status.
    pub outcomes: [u64; 9],
    /// Latency of answered requests, microseconds.
    pub hist: Histogram<u64>,
    /// Open loop: how late requests were sent after their intended time, µs.
    /// Large values mean the generator (or its machine) could not keep up.
    pub send_lag: Histogram<u64>,
    /// Replies (RESULT / ERROR) by the second of the load phase they arrived in.
    pub per_second: PerSecond,
    pub expect: Expectations,
}

/// Replies counted by the second of the load phase they arrived in: index
/// `i` holds the replies of `[i s, i+1 s)`. The vectors grow once per second
/// of the run, never per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerSecond {
    /// RESULT replies (any business outcome).
    pub results: Vec<u64>,
    /// ERROR replies to workload requests.
    pub errors: Vec<u64>,
}

impl PerSecond {
    /// Counts one reply that arrived `second` whole seconds into the run.
    #[inline]
    pub fn add(&mut self, second: u64, error: bool) {
        let i = second as usize;
        if i >= self.results.len() {
            self.results.resize(i + 1, 0);
            self.errors.resize(i + 1, 0);
        }
        if error {
            self.errors[i] += 1;
        } else {
            self.results[i] += 1;
        }
    }

    fn merge(&mut self, o: &PerSecond) {
        if o.results.len() > self.results.len() {
            self.results.resize(o.results.len(), 0);
            self.errors.resize(o.results.len(), 0);
        }
        for (a, b) in self.results.iter_mut().zip(&o.results) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(&o.errors) {
            *a += b;
        }
    }
}

impl Stats {
    pub fn new(auctions: usize, sales: usize) -> Stats {
        Stats {
            attempted: 0,
            succeeded: 0,
            failed: 0,
            unexpected: 0,
            lost: 0,
            connections_opened: 0,
            connect_failures: 0,
            handshake_failures: 0,
            timeouts: 0,
            protocol_errors: 0,
            closed_by_server: 0,
            replayed: 0,
            pushes: 0,
            unmatched: 0,
            in_doubt: 0,
            errors: [0; ERROR_SLOTS],
            first_connect_error: None,
            first_protocol_error: None,
            outcomes: [0; 9],
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds"),
            send_lag: Histogram::new_with_bounds(1, HIST_MAX_US, 2)
                .expect("valid histogram bounds"),
            per_second: PerSecond::default(),
            expect: Expectations::new(auctions, sales),
        }
    }

    /// A RESULT answered `op` after `latency_us`.
    #[inline]
    pub fn record_result(&mut self, op: &Op, status: Status, replayed: bool, latency_us: u64) {
        self.succeeded += 1;
        self.outcomes[status as usize] += 1;
        self.replayed += replayed as u64;
        self.hist.saturating_record(latency_us);
        if status == Status::Ok {
            match *op {
                Op::Bid { index, req } => {
                    if let Some(e) = self.expect.auctions.get_mut(index as usize) {
                        e.ok_bids += 1;
                        e.max_ok_amount = e.max_ok_amount.max(req.amount);
                    }
                }
                Op::Buy { index, req } => {
                    if let Some(e) = self.expect.sales.get_mut(index as usize) {
                        e.ok_units += u64::from(req.quantity);
                    }
                }
            }
        }
    }

    /// An ERROR frame answered a workload request after `latency_us`.
    #[inline]
    pub fn record_error(&mut self, code: ErrorCode, latency_us: u64) {
        self.failed += 1;
        self.in_doubt += u64::from(code == ErrorCode::InDoubt);
        self.count_error_frame(code);
        self.hist.saturating_record(latency_us);
    }

    /// Counts an ERROR frame by code (also for handshake or unmatched errors).
    pub fn count_error_frame(&mut self, code: ErrorCode) {
        self.errors[code as usize] += 1;
    }

    /// `(name, count)` of every error code seen.
    pub fn errors_by_name(&self) -> Vec<(&'static str, u64)> {
        ErrorCode::ALL
            .iter()
            .filter(|c| self.errors[**c as usize] > 0)
            .map(|c| (c.name(), self.errors[*c as usize]))
            .collect()
    }

    /// `(name, count)` of every status seen.
    pub fn outcomes_by_name(&self) -> Vec<(&'static str, u64)> {
        Status::ALL
            .iter()
            .filter(|s| self.outcomes[**s as usize] > 0)
            .map(|s| (s.name(), self.outcomes[*s as usize]))
            .collect()
    }

    pub fn merge(&mut self, o: &Stats) {
        self.attempted += o.attempted;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.unexpected += o.unexpected;
        self.lost += o.lost;
        self.connections_opened += o.connections_opened;
        self.connect_failures += o.connect_failures;
        self.handshake_failures += o.handshake_failures;
        self.timeouts += o.timeouts;
        self.protocol_errors += o.protocol_errors;
        self.closed_by_server += o.closed_by_server;
        self.replayed += o.replayed;
        self.pushes += o.pushes;
        self.unmatched += o.unmatched;
        self.in_doubt += o.in_doubt;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        for (a, b) in self.outcomes.iter_mut().zip(o.outcomes) {
            *a += b;
        }
        if self.first_connect_error.is_none() {
            self.first_connect_error.clone_from(&o.first_connect_error);
        }
        if self.first_protocol_error.is_none() {
            self.first_protocol_error
                .clone_from(&o.first_protocol_error);
        }
        self.hist.add(&o.hist).expect("histograms share bounds");
        self.send_lag
            .add(&o.send_lag)
            .expect("histograms share bounds");
        self.per_second.merge(&o.per_second);
        self.expect.merge(&o.expect);
    }

    /// Requests whose outcome the run does not know: never answered, answered
    /// by something unexpected, or answered `IN_DOUBT`.
    pub fn unknown_outcomes(&self) -> u64 {
        self.lost + self.unexpected + self.in_doubt
    }

    /// Every attempted request is in exactly one bucket.
    pub fn is_balanced(&self) -> bool {
        self.attempted == self.succeeded + self.failed + self.unexpected + self.lost
    }
}

/// Counters shared with the progress line; threads add their deltas often.
#[derive(Debug, Default)]
pub struct Live {
    pub attempted: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub lost: AtomicU64,
}

/// A thread's last published values, to publish deltas.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    attempted: u64,
    succeeded: u64,
    failed: u64,
    lost: u64,
}

impl Live {
    pub fn publish(&self, s: &Stats, last: &mut Published) {
        let add = |a: &AtomicU64, now: u64, before: &mut u64| {
            if now != *before {
                a.fetch_add(now - *before, Ordering::Relaxed);
                *before = now;
            }
        };
        add(&self.attempted, s.attempted, &mut last.attempted);
        add(&self.succeeded, s.succeeded, &mut last.succeeded);
        add(&self.failed, s.failed, &mut last.failed);
        add(&self.lost, s.lost, &mut last.lost);
    }

    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.attempted.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_protocol::{BidRequest, BuyRequest};

    fn bid(index: u32, amount: u64) -> Op {
        Op::Bid {
            index,
            req: BidRequest {
                auction_id: 1,
                bidder_id: 1,
                amount,
                bid_id: 1,
            },
        }
    }

    #[test]
    fn records_and_merges() {
        let mut a = Stats::new(2, 1);
        a.attempted = 4;
        a.record_result(&bid(0, 10), Status::Ok, false, 100);
        a.record_result(&bid(0, 7), Status::Outbid, false, 200);
        a.record_error(ErrorCode::Busy, 50);
        a.lost = 1;
        assert!(a.is_balanced());
        assert_eq!(a.unknown_outcomes(), 1);
        let mut b = Stats::new(2, 1);
        b.attempted = 2;
        b.record_result(&bid(0, 12), Status::Ok, true, 300);
        let buy = Op::Buy {
            index: 0,
            req: BuyRequest {
                sku_id: 1,
                buyer_id: 1,
                quantity: 1,
                order_id: 1,
            },
        };
        b.record_result(&buy, Status::Ok, false, 400);
        a.merge(&b);
        assert!(a.is_balanced());
        assert_eq!(a.succeeded, 4);
        assert_eq!(a.replayed, 1);
        assert_eq!(a.outcomes_by_name(), vec![("OK", 3), ("OUTBID", 1)]);
        assert_eq!(a.errors_by_name(), vec![("BUSY", 1)]);
        assert_eq!(
            a.expect.auctions[0],
            AuctionExpect {
                ok_bids: 2,
                max_ok_amount: 12
            }
        );
        assert_eq!(a.expect.auctions[1], AuctionExpect::default());
        assert_eq!(a.expect.sales[0].ok_units, 1);
        assert_eq!(a.hist.len(), 5);
        assert_eq!(a.hist.max(), a.hist.highest_equivalent(400));

        let live = Live::default();
        let mut p = Published::default();
        live.publish(&a, &mut p);
        live.publish(&a, &mut p);
        assert_eq!(live.snapshot(), [6, 4, 1, 1]);
    }

    #[test]
    fn per_second_counts_and_merges() {
        let mut a = Stats::new(1, 0);
        a.per_second.add(0, false);
        a.per_second.add(2, false);
        a.per_second.add(2, true);
        assert_eq!(a.per_second.results, vec![1, 0, 1]);
        assert_eq!(a.per_second.errors, vec![0, 0, 1]);
        let mut b = Stats::new(1, 0);
        b.per_second.add(3, false);
        b.per_second.add(0, true);
        a.merge(&b);
        assert_eq!(a.per_second.results, vec![1, 0, 1, 1]);
        assert_eq!(a.per_second.errors, vec![1, 0, 1, 0]);
        let mut c = Stats::new(1, 0);
        c.merge(&Stats::new(1, 0));
        assert!(c.per_second.results.is_empty());
    }

    #[test]
    fn in_doubt_is_counted_apart_from_unavailable() {
        let mut a = Stats::new(1, 0);
        a.attempted = 3;
        a.record_error(ErrorCode::Unavailable, 10);
        a.record_error(ErrorCode::InDoubt, 20);
        a.record_error(ErrorCode::InDoubt, 30);
        assert!(a.is_balanced());
        assert_eq!(a.failed, 3);
        assert_eq!(a.in_doubt, 2);
        assert_eq!(a.unknown_outcomes(), 2);
        assert_eq!(
            a.errors_by_name(),
            vec![("UNAVAILABLE", 1), ("IN_DOUBT", 2)]
        );
        // An IN_DOUBT that answered nothing outstanding is counted by code only.
        let mut b = Stats::new(1, 0);
        b.count_error_frame(ErrorCode::InDoubt);
        assert_eq!((b.in_doubt, b.errors[11]), (0, 1));
        a.merge(&b);
        assert_eq!(a.in_doubt, 2);
        assert_eq!(
            a.errors_by_name(),
            vec![("UNAVAILABLE", 1), ("IN_DOUBT", 3)]
        );
    }
}
