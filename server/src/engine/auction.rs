//! One auction's state and the rules of a bid.

use gavel_protocol::{AuctionInfo, AuctionState, ResultPayload, Status};

#[derive(Debug, Clone, Copy)]
pub struct Auction {
    pub id: u64,
    pub reserve: u64,
    /// As sent by the opener (0 is kept as 0 so a replayed OPEN compares equal).
    pub min_increment: u64,
    pub ends_at_ms: u64,
    pub high_bid: u64,
    pub high_bidder: u64,
    pub bid_count: u64,
    pub closed: bool,
    /// The shard's bookkeeping, not the auction's state (`==` ignores it):
    /// when a command last named it, in [`COARSE_MS`] units (wrapping), so
    /// an idle open auction can leave memory. Fits the padding: an auction
    /// stays 64 bytes.
    pub touched: u32,
}

/// The unit of [`Auction::touched`]: 2^32 of them are 8.7 years.
pub const COARSE_MS: u64 = 64;

/// `now_ms` in [`COARSE_MS`] units, wrapped to 32 bits.
#[inline]
pub fn coarse(now_ms: u64) -> u32 {
    (now_ms / COARSE_MS) as u32
}

impl PartialEq for Auction {
    fn eq(&self, o: &Self) -> bool {
        let state = |a: &Auction| {
            (
                a.id,
                a.reserve,
                a.min_increment,
                a.ends_at_ms,
                a.high_bid,
                a.high_bidder,
                a.bid_count,
                a.closed,
            )
        };
        state(self) == state(o)
    }
}

impl Eq for Auction {}

const _: () = assert!(std::mem::size_of::<Auction>() == 64);

/// What a bid did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BidOutcome {
    Accepted,
    Rejected(Status),
}

impl Auction {
    pub fn new(id: u64, reserve: u64, min_increment: u64, ends_at_ms: u64) -> Self {
        Auction {
            id,
            reserve,
            min_increment,
            ends_at_ms,
            high_bid: 0,
            high_bidder: 0,
            bid_count: 0,
            closed: false,
            touched: 0,
        }
    }

    /// True once the scheduled end has passed (`ends_at_ms` is exclusive).
    pub fn time_is_up(&self, now_ms: u64) -> bool {
        self.ends_at_ms != 0 && now_ms >= self.ends_at_ms
    }

    /// Applies a bid. The caller closes the auction first when its time is up.
    pub fn bid(&mut self, bidder_id: u64, amount: u64) -> BidOutcome {
        if self.closed {
            return BidOutcome::Rejected(Status::Closed);
        }
        if amount < self.reserve {
            return BidOutcome::Rejected(Status::BelowReserve);
        }
        // Ties lose; an unbeatable high bid (overflow) makes every bid OUTBID.
        let needed = self.high_bid.checked_add(self.min_increment.max(1));
        match needed {
            Some(n) if amount >= n => {
                self.high_bid = amount;
                self.high_bidder = bidder_id;
                self.bid_count += 1;
                BidOutcome::Accepted
            }
            _ => BidOutcome::Rejected(Status::Outbid),
        }
    }

    /// RESULT of a bid or close: value = high bid, aux = high bidder.
    pub fn result(&self, status: Status) -> ResultPayload {
        ResultPayload::new(status, self.high_bid, self.high_bidder)
    }

    pub fn info(&self) -> AuctionInfo {
        AuctionInfo {
            auction_id: self.id,
            state: if self.closed {
                AuctionState::Closed
            } else {
                AuctionState::Open
            },
            high_bid: self.high_bid,
            high_bidder: self.high_bidder,
            bid_count: self.bid_count,
            reserve: self.reserve,
            min_increment: self.min_increment,
            ends_at_ms: self.ends_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Auction {
        Auction::new(1, 100, 10, 0)
    }

    #[test]
    fn reserve_then_increment_then_ties_lose() {
        let mut x = a();
        assert_eq!(x.bid(1, 99), BidOutcome::Rejected(Status::BelowReserve));
        assert_eq!(x.bid(1, 100), BidOutcome::Accepted);
        assert_eq!(x.bid(2, 109), BidOutcome::Rejected(Status::Outbid));
        assert_eq!(x.bid(2, 110), BidOutcome::Accepted);
        assert_eq!((x.high_bid, x.high_bidder, x.bid_count), (110, 2, 2));
    }

    #[test]
    fn zero_increment_means_one() {
        let mut x = Auction::new(1, 0, 0, 0);
        assert_eq!(x.bid(1, 0), BidOutcome::Rejected(Status::Outbid));
        assert_eq!(x.bid(1, 5), BidOutcome::Accepted);
        assert_eq!(x.bid(2, 5), BidOutcome::Rejected(Status::Outbid));
        assert_eq!(x.bid(2, 6), BidOutcome::Accepted);
    }

    #[test]
    fn amounts_near_u64_max_do_not_overflow() {
        let mut x = Auction::new(1, 0, 1, 0);
        assert_eq!(x.bid(1, u64::MAX), BidOutcome::Accepted);
        assert_eq!(x.bid(2, u64::MAX), BidOutcome::Rejected(Status::Outbid));
        let mut y = Auction::new(2, 0, 1, 0);
        assert_eq!(y.bid(1, (1 << 53) + 1), BidOutcome::Accepted);
        assert_eq!(y.bid(2, (1 << 53) + 2), BidOutcome::Accepted);
    }

    #[test]
    fn closed_rejects() {
        let mut x = a();
        x.closed = true;
        assert_eq!(x.bid(1, 1000), BidOutcome::Rejected(Status::Closed));
        assert!(Auction::new(1, 0, 0, 10).time_is_up(10));
        assert!(!Auction::new(1, 0, 0, 10).time_is_up(9));
        assert!(!Auction::new(1, 0, 0, 0).time_is_up(u64::MAX));
    }
}
