//! The seam between shards and persistence.
//!
//! A shard does not know who persists its work: after each batch it hands the
//! [`Mutation`]s it made, together with the replies that depend on them, to a
//! [`ShardOutlet`]. The in-memory outlet releases the replies at once; a
//! durable store releases them only after its transaction commits.

use gavel_protocol::{OpenAuctionRequest, OpenSaleRequest};

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
