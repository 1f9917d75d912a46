//! Messages between event loops and shards.
//!
//! An event loop turns decoded requests into [`Command`]s, groups them per
//! shard for one loop turn and sends each group as one batch
//! (a `ShardMsg::Batch` of the shard runner).
//! Shards answer with [`Outgoing`] replies and pushes, again one `Vec` per
//! event loop per shard batch. Everything here is plain data: no sockets.

use gavel_protocol::{
    AuctionInfo, BidRequest, BuyRequest, ErrorCode, OpenAuctionRequest, OpenSaleRequest, Push,
    ResultPayload, SaleInfo,
};

use super::limits::Cap;

/// Identifies a connection across threads: its event loop, slab slot and the
/// generation of that slot (so a reply never reaches a reused slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub io: u16,
    pub slot: u32,
    pub gen: u32,
}

/// A request a shard executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    OpenAuction(OpenAuctionRequest),
    Bid(BidRequest),
    CloseAuction(u64),
    GetAuction(u64),
    OpenSale(OpenSaleRequest),
    Buy(BuyRequest),
    GetSale(u64),
    Subscribe(u64),
    Unsubscribe(u64),
}

impl Op {
    /// Requests that may change state: refused while the store is failing.
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Op::OpenAuction(_) | Op::Bid(_) | Op::CloseAuction(_) | Op::OpenSale(_) | Op::Buy(_)
        )
    }

    /// The key that decides the owning shard: auctions and SKUs live in
    /// separate key spaces.
    pub fn routing_key(&self) -> u64 {
        match *self {
            Op::OpenAuction(o) => auction_key(o.auction_id),
            Op::Bid(b) => auction_key(b.auction_id),
            Op::CloseAuction(id) | Op::GetAuction(id) | Op::Subscribe(id) | Op::Unsubscribe(id) => {
                auction_key(id)
            }
            Op::OpenSale(s) => sku_key(s.sku_id),
            Op::Buy(b) => sku_key(b.sku_id),
            Op::GetSale(id) => sku_key(id),
        }
    }
}

fn auction_key(id: u64) -> u64 {
    id
}

fn sku_key(id: u64) -> u64 {
    id ^ 0x5bd1_e995_0000_0000
}

/// splitmix64's finaliser: spreads sequential ids evenly over shards.
#[inline]
pub fn shard_of(key: u64, shards: usize) -> usize {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % shards as u64) as usize
}

#[derive(Debug, Clone, Copy)]
pub struct Command {
    pub conn: ConnRef,
    pub request_id: u32,
    pub op: Op,
    /// When the event loop decoded it (µs on that loop's clock), for the
    /// latency histogram; carried back in the reply.
    pub t0_us: u32,
    /// The request's message type, for per-type metrics.
    pub kind: u8,
}

/// What a shard sends back for one request, or a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Result {
        request_id: u32,
        flags: u8,
        result: ResultPayload,
    },
    Auction {
        request_id: u32,
        info: AuctionInfo,
    },
    Sale {
        request_id: u32,
        info: SaleInfo,
    },
    Error {
        request_id: u32,
        code: ErrorCode,
    },
    /// Refused at a configured cap: an ERROR (`limit.code()`) carrying the
    /// cap's message; not executed.
    Refused {
        request_id: u32,
        limit: Cap,
    },
    /// Server-initiated; does not answer a request.
    Push(Push),
}

#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    pub slot: u32,
    pub gen: u32,
    /// Copied from the [`Command`] answered (0 for pushes).
    pub t0_us: u32,
    pub kind: u8,
    /// How this reply changed the connection's subscriptions: +1 for a
    /// SUBSCRIBE that subscribed, -1 for an UNSUBSCRIBE that unsubscribed, 0
    /// otherwise (an AUCTION_CLOSED push ends one implicitly). The event
    /// loop keeps each connection's count from these.
    pub subs: i8,
    pub reply: Reply,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_shards() {
        let mut counts = [0usize; 4];
        for id in 0..40_000u64 {
            counts[shard_of(id, 4)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
