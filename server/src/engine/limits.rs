//! What bounds a shard's memory: the configured caps, the requests refused
//! at one of them, and how much a shard holds (for the gauges).

/// How much a shard holds: auctions, sales, subscriptions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub auctions: usize,
    pub sales: usize,
    pub subscriptions: usize,
}
