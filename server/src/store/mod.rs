//! Persistence, journal first.
//!
//! Shards emit [`Mutation`]s. The [`writer`] appends each commit's
//! mutations as one record ([`journal`] format) to the store's [`Journal`]
//! and releases the replies once that append is on disk: the journal *is*
//! the commit. The [`materializer`] then folds committed records into a
//! [`WriteBatch`] (several updates of one auction collapse into one row,
//! every bid and order is kept for the log) and applies it to the
//! [`Tables`] in large transactions, off the reply path, recording the last
//! journal sequence it applied in the same transaction; applied records
//! are then removed from the journal. At start, [`recovery`] applies the
//! journal's tail to the tables and loads a [`Snapshot`] back. The
//! [`lookup`] thread reads back what left the shards' memory (keys, with
//! [`quarantined`] records' keys too; passivated auctions and sales).
//!
//! Integers are `u64` on the wire and `i64` in SQL (SQLite INTEGER,
//! PostgreSQL BIGINT): they are stored bit-for-bit (`u64 as i64`), so values
//! at or above 2^63 read back exactly, but appear negative to SQL.

pub mod gate;
pub mod journal;
pub mod lookup;
pub mod materializer;
pub mod postgres;
pub mod quarantined;
pub mod recovery;
pub mod sqlite;
pub mod writer;

use std::collections::HashMap;
use std::time::Duration;

use gavel_protocol::{OpenAuctionRequest, OpenSaleRequest};

use crate::engine::idempotency::{Key, KeyKind, StoredOutcome};
use crate::engine::mutation::Mutation;

/// Where state is kept, from `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    Sqlite(String),
    Postgres(String),
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "memory" {
            Ok(StoreUrl::Memory)
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite: needs a path, e.g. sqlite:./gavel-data/gavel.db".into());
            }
            Ok(StoreUrl::Sqlite(path.to_string()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(s.to_string()))
        } else {
            Err(format!(
                "unknown store {s:?}: use memory, sqlite:PATH or postgres://USER@HOST:PORT/DB"
            ))
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Sqlite(p) => write!(f, "sqlite:{p}"),
            // Never print a password.
            StoreUrl::Postgres(u) => match (u.find("://"), u.rfind('@')) {
                (Some(s), Some(at)) if at > s => write!(f, "postgres://…{}", &u[at..]),
                _ => f.write_str(u),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {message}")]
    Postgres {
        message: String,
        sqlstate: Option<String>,
    },
    #[error("store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Whether trying the same thing again cannot help: the store refused
    /// the data itself (a constraint, a type), as opposed to being
    /// unreachable, busy, slow or out of space.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TypeMismatch
                    | rusqlite::ErrorCode::TooBig
            ),
            // Class 22: data exception; 23: integrity constraint violation;
            // 42: syntax error or access rule violation.
            StoreError::Postgres {
                sqlstate: Some(s), ..
            } => ["22", "23", "42"].iter().any(|c| s.starts_with(c)),
            _ => false,
        }
    }
}

/// The write-ahead journal: the durable commit of every writer round. An
/// append-only table keyed by a rising sequence number, with no secondary
/// index, so a commit costs one small append and the sync to disk. Calls are
/// blocking; the writer thread owns the journal.
pub trait Journal: Send {
    /// Appends one record in one transaction that reaches the disk before it
    /// returns, and removes the records at or below `applied` (already in
    /// the tables; 0 = none). A record whose previous attempt failed (its
    /// outcome may be unknown) is sent again with `first_attempt == false`
    /// and the same bytes; the append must then be idempotent.
    fn append(
        &mut self,
        seq: u64,
        record: &[u8],
        applied: u64,
        first_attempt: bool,
    ) -> Result<(), StoreError>;
    /// Cheap reachability check used while the circuit breaker is open.
    fn ping(&mut self) -> Result<(), StoreError>;
    /// The records after `seq`, oldest first (recovery).
    fn read_after(&mut self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Removes the records at or below `seq`.
    fn truncate(&mut self, seq: u64) -> Result<(), StoreError>;
    /// Removes the one record `seq` (a damaged tail, at recovery).
    fn remove(&mut self, seq: u64) -> Result<(), StoreError>;
}

/// The queryable tables (auctions, sales, holdings, the bid and order logs)
/// that operators read, brought up to date from the journal by the
/// materializer, off the reply path.
pub trait Tables: Send {
    /// Applies one batch in one transaction, recording `applied_seq` (the
    /// last journal record it holds) in the same transaction. Must be
    /// idempotent when `first_attempt == false`.
    fn apply(
        &mut self,
        batch: &WriteBatch,
        applied_seq: u64,
        first_attempt: bool,
    ) -> Result<(), StoreError>;
    /// Sets a journal record the tables refuse (a permanent error) aside in
    /// the `quarantine` table, with the error, and counts it as applied —
    /// one transaction. Kept for an operator; never silently dropped.
    fn quarantine(&mut self, seq: u64, record: &[u8], error: &str) -> Result<(), StoreError>;
    /// The last journal record the tables hold (0 = none).
    fn applied_seq(&mut self) -> Result<u64, StoreError>;
    /// Everything needed to serve again after a restart: all auctions and
    /// sales, holdings, and bids/orders accepted at or after `since_ms`.
    fn load(&mut self, since_ms: u64) -> Result<Snapshot, StoreError>;
    /// An accepted key's log row (bid or order), if the tables hold it: a
    /// point lookup on the log's primary key.
    fn find_key(&mut self, key: Key) -> Result<Option<StoredOutcome>, StoreError>;
    /// One auction's row, if the tables hold it (a passivated auction
    /// coming back into memory).
    fn find_auction(&mut self, id: u64) -> Result<Option<AuctionRow>, StoreError>;
    /// One sale's row and its holdings `(buyer, held)`, if the tables hold
    /// it (a passivated sale coming back into memory).
    fn find_sale(&mut self, id: u64) -> Result<Option<FoundSale>, StoreError>;
    /// Quarantined journal records `(seq, record)` with `seq` after
    /// `seq` (see [`quarantined`]).
    fn quarantined_after(&mut self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
}

/// A sale's row and its holdings `(buyer, held)`.
pub type FoundSale = (SaleRow, Vec<(u64, u64)>);

/// Opens another connection to the configured store's tables (the key
/// lookups use their own, so a lookup never waits behind a batch).
pub fn open_tables(
    url: &StoreUrl,
    durable: bool,
    timeout: Duration,
) -> Result<Option<Box<dyn Tables>>, StoreError> {
    Ok(match url {
        StoreUrl::Memory => None,
        StoreUrl::Sqlite(path) => Some(Box::new(sqlite::SqliteStore::open(path, durable)?)),
        StoreUrl::Postgres(u) => Some(Box::new(postgres::PgStore::connect(u, timeout)?)),
    })
}

/// A durable store, opened: its journal (for the writer) and its tables
/// (for the materializer), each on a connection of its own.
pub struct Opened {
    pub journal: Box<dyn Journal>,
    pub tables: Box<dyn Tables>,
}

/// An auction row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuctionRow {
    pub id: u64,
    pub reserve: u64,
    pub min_increment: u64,
    pub ends_at_ms: u64,
    pub high_bid: u64,
    pub high_bidder: u64,
    pub bid_count: u64,
    pub closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleRow {
    pub id: u64,
    pub stock: u64,
    pub sold: u64,
    pub per_buyer_limit: u32,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
}

/// One accepted bid (the bid log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BidRow {
    pub auction_id: u64,
    pub bid_id: u64,
    pub bidder_id: u64,
    pub amount: u64,
    /// The auction's bid count after this bid: orders the log.
    pub seq: u64,
    pub at_ms: u64,
}

/// One accepted purchase (the order log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRow {
    pub sku_id: u64,
    pub order_id: u64,
    pub buyer_id: u64,
    pub quantity: u32,
    pub sold_after: u64,
    pub held_after: u64,
    pub at_ms: u64,
}

impl BidRow {
    /// Its idempotency key and outcome, as a key lookup answers them.
    pub fn keyed(&self) -> (Key, StoredOutcome) {
        let key = Key {
            kind: KeyKind::Bid,
            scope: self.auction_id,
            key: self.bid_id,
        };
        let stored = StoredOutcome::Bid {
            bidder_id: self.bidder_id,
            amount: self.amount,
            at_ms: self.at_ms,
        };
        (key, stored)
    }
}

impl OrderRow {
    /// Its idempotency key and outcome, as a key lookup answers them.
    pub fn keyed(&self) -> (Key, StoredOutcome) {
        let key = Key {
            kind: KeyKind::Order,
            scope: self.sku_id,
            key: self.order_id,
        };
        let stored = StoredOutcome::Order {
            buyer_id: self.buyer_id,
            quantity: u64::from(self.quantity),
            sold_after: self.sold_after,
            held_after: self.held_after,
            at_ms: self.at_ms,
        };
        (key, stored)
    }
}

/// The latest high bid of an auction within one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuctionUpdate {
    pub id: u64,
    pub high_bid: u64,
    pub high_bidder: u64,
    pub bid_count: u64,
}

/// Mutations of one flush, coalesced. Apply order inside the transaction:
/// opens, then updates and logs, then closes — the order they can happen in.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub auctions_opened: Vec<OpenAuctionRequest>,
    pub sales_opened: Vec<OpenSaleRequest>,
    /// Final high bid per auction touched in this batch.
    pub auction_updates: HashMap<u64, AuctionUpdate, ahash::RandomState>,
    pub auctions_closed: Vec<u64>,
    pub bids: Vec<BidRow>,
    /// Final `sold` per SKU touched in this batch.
    pub sale_updates: HashMap<u64, u64, ahash::RandomState>,
    /// Final holding per (sku, buyer) touched in this batch.
    pub holdings: HashMap<(u64, u64), u64, ahash::RandomState>,
    pub orders: Vec<OrderRow>,
    /// Mutations folded in (not rows: 1,000 bids on one auction are 1,000 here).
    pub mutations: usize,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.mutations == 0
    }

    /// Orders the log rows by their keys, so inserting them walks each
    /// B-tree left to right over pages already in cache instead of jumping
    /// between random ones (the materializer's cost is B-tree descents).
    pub fn sort_logs(&mut self) {
        self.bids.sort_unstable_by_key(|b| (b.auction_id, b.bid_id));
        self.orders.sort_unstable_by_key(|o| (o.sku_id, o.order_id));
    }

    pub fn clear(&mut self) {
        self.auctions_opened.clear();
        self.sales_opened.clear();
        self.auction_updates.clear();
        self.auctions_closed.clear();
        self.bids.clear();
        self.sale_updates.clear();
        self.holdings.clear();
        self.orders.clear();
        self.mutations = 0;
    }

    pub fn add(&mut self, m: &Mutation) {
        self.mutations += 1;
        match *m {
            Mutation::AuctionOpened { req, .. } => self.auctions_opened.push(req),
            Mutation::BidAccepted {
                auction_id,
                bidder_id,
                amount,
                bid_id,
                bid_count,
                at_ms,
            } => {
                let u = AuctionUpdate {
                    id: auction_id,
                    high_bid: amount,
                    high_bidder: bidder_id,
                    bid_count,
                };
                // Counts only rise, so the highest count is the latest state
                // even if batches from several rounds interleave.
                self.auction_updates
                    .entry(auction_id)
                    .and_modify(|cur| {
                        if cur.bid_count < bid_count {
                            *cur = u
                        }
                    })
                    .or_insert(u);
                self.bids.push(BidRow {
                    auction_id,
                    bid_id,
                    bidder_id,
                    amount,
                    seq: bid_count,
                    at_ms,
                });
            }
            Mutation::AuctionClosed { auction_id, .. } => self.auctions_closed.push(auction_id),
            Mutation::SaleOpened { req, .. } => self.sales_opened.push(req),
            Mutation::Purchase {
                sku_id,
                buyer_id,
                quantity,
                order_id,
                sold_after,
                held_after,
                at_ms,
            } => {
                let s = self.sale_updates.entry(sku_id).or_insert(0);
                *s = (*s).max(sold_after);
                let h = self.holdings.entry((sku_id, buyer_id)).or_insert(0);
                *h = (*h).max(held_after);
                self.orders.push(OrderRow {
                    sku_id,
                    order_id,
                    buyer_id,
                    quantity,
                    sold_after,
                    held_after,
                    at_ms,
                });
            }
        }
    }
}

/// State read back at start.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub auctions: Vec<AuctionRow>,
    pub sales: Vec<SaleRow>,
    /// (sku_id, buyer_id, held)
    pub holdings: Vec<(u64, u64, u64)>,
    /// Bids inside the idempotency window, oldest first.
    pub bids: Vec<BidRow>,
    /// Orders inside the idempotency window, oldest first.
    pub orders: Vec<OrderRow>,
}

impl Snapshot {
    /// Orders the logs as they happened (recovery remembers keys oldest
    /// first). Done here rather than by the query: a sequential scan of the
    /// table plus an in-memory sort is several times cheaper than walking
    /// the at_ms index and fetching each row at random.
    pub fn sort_logs_by_time(&mut self) {
        self.bids
            .sort_unstable_by_key(|b| (b.at_ms, b.auction_id, b.seq));
        self.orders
            .sort_unstable_by_key(|o| (o.at_ms, o.sku_id, o.sold_after));
    }
}

/// `u64` to SQL `i64`, bit for bit.
#[inline]
pub(crate) fn to_sql(v: u64) -> i64 {
    v as i64
}

/// SQL `i64` back to `u64`, bit for bit.
#[inline]
pub(crate) fn from_sql(v: i64) -> u64 {
    v as u64
}

/// Opens the configured store (`None` for memory), applying its schema.
pub fn open(
    url: &StoreUrl,
    durable: bool,
    timeout: Duration,
) -> Result<Option<Opened>, StoreError> {
    Ok(match url {
        StoreUrl::Memory => None,
        StoreUrl::Sqlite(path) => Some(Opened {
            journal: Box::new(sqlite::SqliteJournal::open(path, durable)?),
            tables: Box::new(sqlite::SqliteStore::open(path, durable)?),
        }),
        StoreUrl::Postgres(u) => Some(Opened {
            journal: Box::new(postgres::PgStore::connect(u, timeout)?),
            tables: Box::new(postgres::PgStore::connect(u, timeout)?),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(auction_id: u64, amount: u64, bid_count: u64) -> Mutation {
        Mutation::BidAccepted {
            auction_id,
            bidder_id: amount % 7,
            amount,
            bid_id: bid_count,
            bid_count,
            at_ms: 1,
        }
    }

    #[test]
    fn many_bids_on_one_auction_collapse_to_one_update() {
        let mut b = WriteBatch::default();
        for i in 1..=1000 {
            b.add(&bid(5, i * 10, i));
        }
        b.add(&bid(6, 3, 1));
        assert_eq!(b.mutations, 1001);
        assert_eq!(b.bids.len(), 1001);
        assert_eq!(b.auction_updates.len(), 2);
        let u = b.auction_updates[&5];
        assert_eq!(
            (u.high_bid, u.high_bidder, u.bid_count),
            (10_000, 10_000 % 7, 1000)
        );
    }

    #[test]
    fn purchases_keep_the_final_sold_and_holdings() {
        let mut b = WriteBatch::default();
        for i in 1..=10u64 {
            b.add(&Mutation::Purchase {
                sku_id: 1,
                buyer_id: i % 2,
                quantity: 1,
                order_id: i,
                sold_after: i,
                held_after: i.div_ceil(2),
                at_ms: 1,
            });
        }
        assert_eq!(b.sale_updates[&1], 10);
        assert_eq!(b.holdings[&(1, 0)], 5);
        assert_eq!(b.holdings[&(1, 1)], 5);
        assert_eq!(b.orders.len(), 10);
        b.clear();
        assert!(b.is_empty() && b.orders.is_empty() && b.sale_updates.is_empty());
    }

    #[test]
    fn store_urls() {
        assert_eq!("memory".parse::<StoreUrl>().unwrap(), StoreUrl::Memory);
        assert_eq!(
            "sqlite:./x.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Sqlite("./x.db".into())
        );
        assert!("sqlite:".parse::<StoreUrl>().is_err());
        assert!("mysql://x".parse::<StoreUrl>().is_err());
        let pg: StoreUrl = "postgres://u:secret@h:5/db".parse().unwrap();
        assert!(!pg.to_string().contains("secret"));
    }
}
