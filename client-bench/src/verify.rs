//! `--verify`: read the server's state back and compare it with what the run
//! was told.
//!
//! For every auction: `high_bid` must equal the highest amount acknowledged
//! with `OK` (0 if none) and `bid_count` the number of `OK`s. For every sale:
//! `sold` must equal the units acknowledged with `OK`, and never exceed
//! `stock`. Requests that got no reply, an unexpected reply or ERROR
//! `IN_DOUBT` have an unknown outcome; when there are some, the checks allow
//! for them (up to that many extra accepted bids or
//! units, and a higher high bid) and say so.

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use gavel_protocol::{AuctionInfo, Request, Response, SaleInfo, Status};

use crate::config::Plan;
use crate::setup::connect;
use crate::stats::{AuctionExpect, Expectations, SaleExpect};

/// Outcome of `--verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub auctions_checked: u64,
    pub sales_checked: u64,
    /// Requests with unknown outcome the checks allowed for.
    pub unknown_outcomes: u64,
    pub mismatches: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Checks one auction. `unknown` is the number of requests whose outcome is unknown.
pub fn check_auction(
    id: u64,
    e: &AuctionExpect,
    got: Option<&AuctionInfo>,
    unknown: u64,
) -> Vec<String> {
    let Some(a) = got else {
        return vec![format!("auction {id}: NOT_FOUND")];
    };
    let mut m = Vec::new();
    let count_ok = if unknown == 0 {
        a.bid_count == e.ok_bids
    } else {
        (e.ok_bids..=e.ok_bids.saturating_add(unknown)).contains(&a.bid_count)
    };
    if !count_ok {
        m.push(format!(
            "auction {id}: bid_count {} but {} bids were acknowledged OK",
            a.bid_count, e.ok_bids
        ));
    }
    let high_ok = if unknown == 0 {
        a.high_bid == e.max_ok_amount
    } else {
        a.high_bid >= e.max_ok_amount
    };
    if !high_ok {
        m.push(format!(
            "auction {id}: high_bid {} but the highest bid acknowledged OK was {}",
            a.high_bid, e.max_ok_amount
        ));
    }
    m
}

/// Checks one sale.
pub fn check_sale(id: u64, e: &SaleExpect, got: Option<&SaleInfo>, unknown: u64) -> Vec<String> {
    let Some(s) = got else {
        return vec![format!("sale {id}: NOT_FOUND")];
    };
    let mut m = Vec::new();
    let sold_ok = if unknown == 0 {
        s.sold == e.ok_units
    } else {
        (e.ok_units..=e.ok_units.saturating_add(unknown)).contains(&s.sold)
    };
    if !sold_ok {
        m.push(format!(
            "sale {id}: sold {} but {} units were acknowledged OK",
            s.sold, e.ok_units
        ));
    }
    if s.sold > s.stock {
        m.push(format!(
            "sale {id}: sold {} exceeds stock {}",
            s.sold, s.stock
        ));
    }
    m
}

/// Deliberately wrong expectations, so a test can see `--verify` catch them.
pub fn inject_error(e: &mut Expectations) {
    if let Some(a) = e.auctions.first_mut() {
        a.ok_bids += 1;
    } else if let Some(s) = e.sales.first_mut() {
        s.ok_units += 1;
    }
}

/// Reads back every auction and sale of the run and compares.
pub fn verify(plan: &Plan, expect: &Expectations, unknown: u64) -> anyhow::Result<VerifyReport> {
    if plan.redis.is_some() {
        return verify_redis(plan, expect, unknown);
    }
    let mut client = connect(plan).context("verify: cannot connect")?;
    let mut report = VerifyReport {
        unknown_outcomes: unknown,
        ..VerifyReport::default()
    };
    if plan.workload.uses_auctions() {
        for chunk in (0..plan.auctions).collect::<Vec<_>>().chunks(256) {
            let mut ids = HashMap::new();
            for &i in chunk {
                let auction_id = plan.auction_id(i);
                ids.insert(client.send(&Request::GetAuction { auction_id }), i);
            }
            client.flush()?;
            for _ in chunk {
                let f = client.recv().context("verify: no reply to GET_AUCTION")?;
                let Some(i) = ids.remove(&f.request_id) else {
                    bail!("verify: reply to unknown request {}", f.request_id);
                };
                let info = match f.body {
                    Response::Auction(a) => Some(a),
                    Response::Result(r) if r.status == Status::NotFound => None,
                    other => bail!("verify: unexpected reply to GET_AUCTION: {other:?}"),
                };
                let e = expect.auctions.get(i as usize).copied().unwrap_or_default();
                report.mismatches.extend(check_auction(
                    plan.auction_id(i),
                    &e,
                    info.as_ref(),
                    unknown,
                ));
                report.auctions_checked += 1;
            }
        }
    }
    if plan.workload.uses_sales() {
        for chunk in (0..plan.skus).collect::<Vec<_>>().chunks(256) {
            let mut ids = HashMap::new();
            for &i in chunk {
                let sku_id = plan.sku_id(i);
                ids.insert(client.send(&Request::GetSale { sku_id }), i);
            }
            client.flush()?;
            for _ in chunk {
                let f = client.recv().context("verify: no reply to GET_SALE")?;
                let Some(i) = ids.remove(&f.request_id) else {
                    bail!("verify: reply to unknown request {}", f.request_id);
                };
                let info = match f.body {
                    Response::Sale(s) => Some(s),
                    Response::Result(r) if r.status == Status::NotFound => None,
                    other => bail!("verify: unexpected reply to GET_SALE: {other:?}"),
                };
                let e = expect.sales.get(i as usize).copied().unwrap_or_default();
                report
                    .mismatches
                    .extend(check_sale(plan.sku_id(i), &e, info.as_ref(), unknown));
                report.sales_checked += 1;
            }
        }
    }
    let _ = client.shutdown_write();
    Ok(report)
}

/// `verify` on Redis: the auction and sale hashes, read with HMGET through
/// gavel-redis (256 per round trip), checked the same way.
fn verify_redis(plan: &Plan, expect: &Expectations, unknown: u64) -> anyhow::Result<VerifyReport> {
    use gavel_redis::{Op, OpResult};
    let mut g = crate::setup::connect_redis(plan).context("verify: cannot connect")?;
    let mut report = VerifyReport {
        unknown_outcomes: unknown,
        ..VerifyReport::default()
    };
    let now = crate::setup::now_ms();
    if plan.workload.uses_auctions() {
        for chunk in (0..plan.auctions).collect::<Vec<_>>().chunks(256) {
            let ops: Vec<Op> = chunk
                .iter()
                .map(|&i| Op::GetAuction(plan.auction_id(i)))
                .collect();
            let res = g.execute(&ops, now).context("verify: reading auctions")?;
            for (&i, r) in chunk.iter().zip(res) {
                let OpResult::Auction(info) = r else {
                    bail!("verify: unexpected reply to a read of auction {i}: {r:?}");
                };
                let e = expect.auctions.get(i as usize).copied().unwrap_or_default();
                report.mismatches.extend(check_auction(
                    plan.auction_id(i),
                    &e,
                    info.as_ref(),
                    unknown,
                ));
                report.auctions_checked += 1;
            }
        }
    }
    if plan.workload.uses_sales() {
        for chunk in (0..plan.skus).collect::<Vec<_>>().chunks(256) {
            let ops: Vec<Op> = chunk.iter().map(|&i| Op::GetSale(plan.sku_id(i))).collect();
            let res = g.execute(&ops, now).context("verify: reading sales")?;
            for (&i, r) in chunk.iter().zip(res) {
                let OpResult::Sale(info) = r else {
                    bail!("verify: unexpected reply to a read of sale {i}: {r:?}");
                };
                let e = expect.sales.get(i as usize).copied().unwrap_or_default();
                report
                    .mismatches
                    .extend(check_sale(plan.sku_id(i), &e, info.as_ref(), unknown));
                report.sales_checked += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_protocol::AuctionState;

    fn auction(high_bid: u64, bid_count: u64) -> AuctionInfo {
        AuctionInfo {
            auction_id: 1,
            state: AuctionState::Open,
            high_bid,
            high_bidder: 1,
            bid_count,
            reserve: 0,
            min_increment: 1,
            ends_at_ms: 0,
        }
    }

    fn sale(stock: u64, sold: u64) -> SaleInfo {
        SaleInfo {
            sku_id: 1,
            state: AuctionState::Open,
            stock,
            sold,
            per_buyer_limit: 0,
            starts_at_ms: 0,
            ends_at_ms: 0,
        }
    }

    #[test]
    fn auctions() {
        let e = AuctionExpect {
            ok_bids: 3,
            max_ok_amount: 30,
        };
        assert!(check_auction(1, &e, Some(&auction(30, 3)), 0).is_empty());
        assert_eq!(check_auction(1, &e, Some(&auction(31, 2)), 0).len(), 2);
        assert_eq!(check_auction(1, &e, None, 0).len(), 1);
        // Unknown outcomes widen the accepted range, not beyond it.
        assert!(check_auction(1, &e, Some(&auction(40, 5)), 2).is_empty());
        assert_eq!(check_auction(1, &e, Some(&auction(29, 6)), 2).len(), 2);
    }

    #[test]
    fn sales() {
        let e = SaleExpect { ok_units: 5 };
        assert!(check_sale(1, &e, Some(&sale(10, 5)), 0).is_empty());
        assert_eq!(check_sale(1, &e, Some(&sale(10, 6)), 0).len(), 1);
        assert_eq!(
            check_sale(1, &SaleExpect { ok_units: 12 }, Some(&sale(10, 12)), 0).len(),
            1
        );
        assert!(check_sale(1, &e, Some(&sale(10, 6)), 1).is_empty());
    }

    #[test]
    fn injection_perturbs() {
        let mut e = Expectations::new(1, 1);
        inject_error(&mut e);
        assert_eq!(e.auctions[0].ok_bids, 1);
        let mut e = Expectations::new(0, 1);
        inject_error(&mut e);
        assert_eq!(e.sales[0].ok_units, 1);
    }
}
