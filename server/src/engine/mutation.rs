//! One state change, as the store persists it: the seam between shards and
//! persistence. A shard emits [`Mutation`]s through its effects; the
//! journal writer records them, the materializer applies them to the tables.

use gavel_protocol::{OpenAuctionRequest, OpenSaleRequest};

use super::command::{shard_of, Op};

/// One state change made by a shard, in the order it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    AuctionOpened {
        req: OpenAuctionRequest,
        at_ms: u64,
    },
    /// An accepted bid: it is now the auction's high bid.
    BidAccepted {
        auction_id: u64,
        bidder_id: u64,
        amount: u64,
        bid_id: u64,
        bid_count: u64,
        at_ms: u64,
    },
    AuctionClosed {
        auction_id: u64,
        at_ms: u64,
    },
    SaleOpened {
        req: OpenSaleRequest,
        at_ms: u64,
    },
    /// An accepted purchase, with the stock and holding after it.
    Purchase {
        sku_id: u64,
        buyer_id: u64,
        quantity: u32,
        order_id: u64,
        sold_after: u64,
        held_after: u64,
        at_ms: u64,
    },
}

impl Mutation {
    /// The shard, of `shards`, that made this mutation. Every mutation is
    /// tracked into the tables (see `engine::idempotency`, ordinals): an
    /// accepted bid or purchase records an idempotency key that may leave
    /// memory once applied, and an auction or sale (open, closed or
    /// finished) may leave memory once all it did is applied.
    pub fn tracked_shard(&self, shards: usize) -> usize {
        let routing = match *self {
            Mutation::BidAccepted { auction_id, .. }
            | Mutation::AuctionClosed { auction_id, .. }
            | Mutation::AuctionOpened {
                req: OpenAuctionRequest { auction_id, .. },
                ..
            } => Op::GetAuction(auction_id).routing_key(),
            Mutation::Purchase { sku_id, .. }
            | Mutation::SaleOpened {
                req: OpenSaleRequest { sku_id, .. },
                ..
            } => Op::GetSale(sku_id).routing_key(),
        };
        shard_of(routing, shards)
    }
}
