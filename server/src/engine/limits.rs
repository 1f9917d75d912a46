//! What bounds a shard's memory: the configured caps, the requests refused
//! at one of them, and how much a shard holds (for the gauges).

use gavel_protocol::ErrorCode;

/// How much a shard holds: auctions, sales, subscriptions, idempotency keys.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub auctions: usize,
    pub sales: usize,
    pub subscriptions: usize,
    /// Keys in memory, accepted and rejected.
    pub keys: usize,
    /// Accepted keys that left memory for the store (inside the window).
    pub spilled_keys: usize,
    /// Memory of the filter of those keys.
    pub filter_bytes: usize,
    /// Commands waiting for a lookup in the store.
    pub parked: usize,
    /// Closed auctions that left memory (ids kept).
    pub passivated: usize,
    /// Buyer holdings in memory (`--max-holdings`).
    pub holdings: usize,
    /// Sold-out or ended sales that left memory (ids kept).
    pub passivated_sales: usize,
}

impl Sizes {
    /// Adds another shard's sizes.
    pub fn add(&mut self, o: Sizes) {
        self.auctions += o.auctions;
        self.sales += o.sales;
        self.subscriptions += o.subscriptions;
        self.keys += o.keys;
        self.spilled_keys += o.spilled_keys;
        self.filter_bytes += o.filter_bytes;
        self.parked += o.parked;
        self.passivated += o.passivated;
        self.holdings += o.holdings;
        self.passivated_sales += o.passivated_sales;
    }
}

/// A cap a request was refused at: answered ERROR `BUSY` with the cap's
/// message, not executed. BUSY is the contract's code for "a bound is
/// reached, retry later": these clear when auctions close, subscriptions
/// end or an operator raises the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `--max-auctions`: this shard's share is taken.
    Auctions,
    /// `--max-sales`: this shard's share is taken.
    Sales,
    /// `--max-holdings`: this shard's share of buyer holdings is taken (a
    /// BUY by a buyer new to the sale is refused; others still buy).
    Holdings,
    /// `--max-subscriptions`: this shard's share is taken.
    Subscriptions,
    /// `--max-subscriptions-per-conn` (checked by the event loop).
    SubscriptionsPerConn,
}

impl Cap {
    pub const ALL: [Cap; 5] = [
        Cap::Auctions,
        Cap::Sales,
        Cap::Holdings,
        Cap::Subscriptions,
        Cap::SubscriptionsPerConn,
    ];

    /// The ERROR code the client gets.
    pub fn code(self) -> ErrorCode {
        ErrorCode::Busy
    }

    /// The ERROR's message.
    pub fn message(self) -> &'static str {
        match self {
            Cap::Auctions => "auction limit reached (--max-auctions)",
            Cap::Sales => "sale limit reached (--max-sales)",
            Cap::Holdings => "holding limit reached (--max-holdings)",
            Cap::Subscriptions => "subscription limit reached (--max-subscriptions)",
            Cap::SubscriptionsPerConn => {
                "too many subscriptions on this connection (--max-subscriptions-per-conn)"
            }
        }
    }

    /// The metric label (`gavel_limit_refusals_total{limit=…}`).
    pub fn label(self) -> &'static str {
        match self {
            Cap::Auctions => "max_auctions",
            Cap::Sales => "max_sales",
            Cap::Holdings => "max_holdings",
            Cap::Subscriptions => "max_subscriptions",
            Cap::SubscriptionsPerConn => "max_subscriptions_per_conn",
        }
    }
}

/// The caps of one shard: its share of the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub auctions: usize,
    pub sales: usize,
    /// Buyer holdings (one per buyer and sale) in memory.
    pub holdings: usize,
    pub subscriptions: usize,
}

impl Capacity {
    /// No caps (tests, benchmarks).
    pub const UNLIMITED: Capacity = Capacity {
        auctions: usize::MAX,
        sales: usize::MAX,
        holdings: usize::MAX,
        subscriptions: usize::MAX,
    };

    /// Each of `shards` shards gets an even share (at least 1) of `total`.
    pub fn share(total: Capacity, shards: usize) -> Capacity {
        let part = |n: usize| (n / shards.max(1)).max(1);
        Capacity {
            auctions: part(total.auctions),
            sales: part(total.sales),
            holdings: part(total.holdings),
            subscriptions: part(total.subscriptions),
        }
    }
}
