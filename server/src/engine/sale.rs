//! One flash sale's state and the rules of a purchase.

use std::collections::HashMap;

use gavel_protocol::{AuctionState, ResultPayload, SaleInfo, Status};

#[derive(Debug, Clone)]
pub struct Sale {
    pub id: u64,
    pub stock: u64,
    pub sold: u64,
    pub per_buyer_limit: u32,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
    /// Units held per buyer.
    pub holdings: HashMap<u64, u64, ahash::RandomState>,
}

impl Sale {
    pub fn new(
        id: u64,
        stock: u64,
        per_buyer_limit: u32,
        starts_at_ms: u64,
        ends_at_ms: u64,
    ) -> Self {
        Sale {
            id,
            stock,
            sold: 0,
            per_buyer_limit,
            starts_at_ms,
            ends_at_ms,
            holdings: HashMap::default(),
        }
    }

    pub fn state(&self, now_ms: u64) -> AuctionState {
        if now_ms < self.starts_at_ms {
            AuctionState::NotStarted
        } else if self.ends_at_ms != 0 && now_ms >= self.ends_at_ms {
            AuctionState::Closed
        } else {
            AuctionState::Open
        }
    }

    pub fn held(&self, buyer_id: u64) -> u64 {
        self.holdings.get(&buyer_id).copied().unwrap_or(0)
    }

    /// What a purchase of `quantity` by a buyer holding `held` would get.
    fn decide(&self, held: u64, quantity: u32, now_ms: u64) -> Status {
        match self.state(now_ms) {
            AuctionState::NotStarted => Status::NotStarted,
            AuctionState::Closed => Status::Closed,
            AuctionState::Open => {
                let q = quantity as u64;
                if q > self.stock - self.sold {
                    Status::SoldOut
                } else if self.per_buyer_limit != 0
                    && held.saturating_add(q) > self.per_buyer_limit as u64
                {
                    Status::LimitExceeded
                } else {
                    Status::Ok
                }
            }
        }
    }

    /// Applies a purchase (all of `quantity` or nothing), unless it would
    /// succeed and give the buyer their first holding here (one more entry
    /// in memory) while `may_add_holder` is false: then `None`, and
    /// nothing changed.
    pub fn buy(
        &mut self,
        buyer_id: u64,
        quantity: u32,
        now_ms: u64,
        may_add_holder: bool,
    ) -> Option<ResultPayload> {
        let held = self.held(buyer_id);
        let status = self.decide(held, quantity, now_ms);
        if status == Status::Ok {
            if held == 0 && !may_add_holder {
                return None;
            }
            let q = quantity as u64;
            self.sold += q;
            *self.holdings.entry(buyer_id).or_insert(0) += q;
        }
        Some(self.result(status, buyer_id))
    }

    /// RESULT of a purchase: value = stock left, aux = the buyer's holding.
    pub fn result(&self, status: Status, buyer_id: u64) -> ResultPayload {
        ResultPayload::new(status, self.stock - self.sold, self.held(buyer_id))
    }

    pub fn info(&self, now_ms: u64) -> SaleInfo {
        SaleInfo {
            sku_id: self.id,
            state: self.state(now_ms),
            stock: self.stock,
            sold: self.sold,
            per_buyer_limit: self.per_buyer_limit,
            starts_at_ms: self.starts_at_ms,
            ends_at_ms: self.ends_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A purchase with room for a new holder.
    fn buy(s: &mut Sale, buyer_id: u64, quantity: u32, now_ms: u64) -> ResultPayload {
        s.buy(buyer_id, quantity, now_ms, true)
            .expect("room for a holder")
    }

    #[test]
    fn no_partial_fills_and_limits() {
        let mut s = Sale::new(1, 5, 2, 0, 0);
        assert_eq!(buy(&mut s, 1, 2, 0), ResultPayload::new(Status::Ok, 3, 2));
        assert_eq!(
            buy(&mut s, 1, 1, 0),
            ResultPayload::new(Status::LimitExceeded, 3, 2)
        );
        assert_eq!(buy(&mut s, 2, 2, 0), ResultPayload::new(Status::Ok, 1, 2));
        assert_eq!(
            buy(&mut s, 3, 2, 0),
            ResultPayload::new(Status::SoldOut, 1, 0)
        );
        assert_eq!(buy(&mut s, 3, 1, 0), ResultPayload::new(Status::Ok, 0, 1));
        assert_eq!(s.sold, 5);
    }

    #[test]
    fn time_window() {
        let mut s = Sale::new(1, 5, 0, 100, 200);
        assert_eq!(buy(&mut s, 1, 1, 99).status, Status::NotStarted);
        assert_eq!(buy(&mut s, 1, 1, 100).status, Status::Ok);
        assert_eq!(buy(&mut s, 1, 1, 200).status, Status::Closed);
        assert_eq!(s.info(50).state, AuctionState::NotStarted);
        assert_eq!(s.info(150).state, AuctionState::Open);
        assert_eq!(s.info(250).state, AuctionState::Closed);
    }

    #[test]
    fn only_a_purchase_that_adds_a_holder_is_held_back() {
        let mut s = Sale::new(1, 3, 2, 0, 0);
        assert_eq!(s.buy(1, 2, 0, false), None);
        assert_eq!((s.sold, s.holdings.len()), (0, 0), "nothing changed");
        let over = s.buy(1, 3, 0, false).map(|r| r.status);
        assert_eq!(over, Some(Status::LimitExceeded), "refused anyway");
        buy(&mut s, 1, 2, 0);
        let more = s.buy(1, 1, 0, false);
        assert_eq!(more, Some(ResultPayload::new(Status::LimitExceeded, 1, 2)));
        let sold_out = s.buy(2, 2, 0, false).map(|r| r.status);
        assert_eq!(sold_out, Some(Status::SoldOut));
        assert_eq!(s.buy(2, 1, 0, true).map(|r| r.status), Some(Status::Ok));
    }

    #[test]
    fn huge_quantities_do_not_overflow() {
        let mut s = Sale::new(1, u64::MAX, 0, 0, 0);
        s.sold = u64::MAX - 1;
        assert_eq!(buy(&mut s, 1, u32::MAX, 0).status, Status::SoldOut);
    }
}
