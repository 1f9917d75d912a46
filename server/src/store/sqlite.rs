//! The embedded store: SQLite in WAL mode, two files.
//!
//! - `PATH.journal` holds the journal ([`SqliteJournal`]): one row per writer
//!   commit, `seq INTEGER PRIMARY KEY` (the rowid: every append lands at the
//!   B-tree's right edge) and the record as a blob. In durable mode
//!   `synchronous=FULL` makes each append reach the disk before the writer
//!   releases its replies.
//! - `PATH` holds the tables ([`SqliteStore`]), written by the materializer
//!   in large transactions. A separate file, so the materializer's long
//!   transactions never hold the lock the journal's appends need.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::{
    from_sql, to_sql, AuctionRow, BidRow, FoundSale, Journal, OrderRow, SaleRow, Snapshot,
    StoreError, Tables, WriteBatch,
};
use crate::engine::idempotency::{Key, KeyKind, StoredOutcome};

const SCHEMA: &str = include_str!("sqlite_schema.sql");

pub struct SqliteStore {
    conn: Connection,
}

/// Opens a database file in WAL mode, creating its directory.
fn connect(path: &str, durable: bool) -> Result<Connection, StoreError> {
    if let Some(dir) = Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(2))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The journal file next to the tables' file.
pub fn journal_path(path: &str) -> String {
    format!("{path}.journal")
}

/// Pages kept in memory by the tables' connection (KiB, as a negative
/// cache_size): the logs' B-trees are written at random keys, and a write
/// that finds its page cached costs a fraction of one that reads it first.
const TABLES_CACHE_KIB: i64 = 256 * 1024;

impl SqliteStore {
    pub fn open(path: &str, durable: bool) -> Result<Self, StoreError> {
        let conn = connect(path, durable)?;
        conn.pragma_update(None, "cache_size", -TABLES_CACHE_KIB)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore { conn })
    }

    fn write(&mut self, b: &WriteBatch, applied_seq: u64) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Opens, then state, then logs: the order they can happen in.
        write_opens(&tx, b)?;
        write_state(&tx, b)?;
        write_logs(&tx, b)?;
        tx.prepare_cached(
            "UPDATE materializer SET applied_seq = ?1 WHERE id = 1 AND applied_seq < ?1",
        )?
        .execute(params![to_sql(applied_seq)])?;
        tx.commit()
    }
}

/// New auctions and sales (a replayed open changes nothing).
fn write_opens(tx: &Connection, b: &WriteBatch) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO auctions (id, reserve, min_increment, ends_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO NOTHING",
    )?;
    for o in &b.auctions_opened {
        st.execute(params![
            to_sql(o.auction_id),
            to_sql(o.reserve),
            to_sql(o.min_increment),
            to_sql(o.ends_at_ms)
        ])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO sales (id, stock, per_buyer_limit, starts_at_ms, ends_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
    )?;
    for o in &b.sales_opened {
        st.execute(params![
            to_sql(o.sku_id),
            to_sql(o.stock),
            o.per_buyer_limit as i64,
            to_sql(o.starts_at_ms),
            to_sql(o.ends_at_ms)
        ])?;
    }
    Ok(())
}

/// Latest high bids, closings, units sold and holdings.
fn write_state(tx: &Connection, b: &WriteBatch) -> rusqlite::Result<()> {
    // Guarded by the count, so an older state never overwrites a newer one.
    let mut st = tx.prepare_cached(
        "UPDATE auctions SET high_bid = ?2, high_bidder = ?3, bid_count = ?4
             WHERE id = ?1 AND bid_count < ?4",
    )?;
    // In key order, like the logs (see WriteBatch::sort_logs).
    let mut updates: Vec<_> = b.auction_updates.values().collect();
    updates.sort_unstable_by_key(|u| u.id);
    for u in updates {
        st.execute(params![
            to_sql(u.id),
            to_sql(u.high_bid),
            to_sql(u.high_bidder),
            to_sql(u.bid_count)
        ])?;
    }
    let mut st = tx.prepare_cached("UPDATE auctions SET closed = 1 WHERE id = ?1")?;
    for id in &b.auctions_closed {
        st.execute(params![to_sql(*id)])?;
    }
    let mut st = tx.prepare_cached("UPDATE sales SET sold = ?2 WHERE id = ?1 AND sold < ?2")?;
    for (id, sold) in &b.sale_updates {
        st.execute(params![to_sql(*id), to_sql(*sold)])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO holdings (sku_id, buyer_id, held) VALUES (?1, ?2, ?3)
             ON CONFLICT (sku_id, buyer_id) DO UPDATE SET held = excluded.held
             WHERE holdings.held < excluded.held",
    )?;
    let mut holdings: Vec<_> = b.holdings.iter().collect();
    holdings.sort_unstable();
    for ((sku, buyer), held) in holdings {
        st.execute(params![to_sql(*sku), to_sql(*buyer), to_sql(*held)])?;
    }
    Ok(())
}

/// The bid and order logs, every row (a row already there is skipped).
fn write_logs(tx: &Connection, b: &WriteBatch) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO bids (auction_id, bid_id, bidder_id, amount, seq, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?;
    for r in &b.bids {
        st.execute(params![
            to_sql(r.auction_id),
            to_sql(r.bid_id),
            to_sql(r.bidder_id),
            to_sql(r.amount),
            to_sql(r.seq),
            to_sql(r.at_ms)
        ])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO orders (sku_id, order_id, buyer_id, quantity, sold_after, held_after, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
    )?;
    for o in &b.orders {
        st.execute(params![
            to_sql(o.sku_id),
            to_sql(o.order_id),
            to_sql(o.buyer_id),
            o.quantity as i64,
            to_sql(o.sold_after),
            to_sql(o.held_after),
            to_sql(o.at_ms)
        ])?;
    }
    Ok(())
}

impl Tables for SqliteStore {
    fn apply(&mut self, batch: &WriteBatch, seq: u64, _first: bool) -> Result<(), StoreError> {
        Ok(self.write(batch, seq)?)
    }

    fn quarantine(&mut self, seq: u64, record: &[u8], error: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO quarantine (seq, record, error) VALUES (?1, ?2, ?3)",
            params![to_sql(seq), record, error],
        )?;
        tx.execute(
            "UPDATE materializer SET applied_seq = ?1 WHERE id = 1 AND applied_seq < ?1",
            params![to_sql(seq)],
        )?;
        Ok(tx.commit()?)
    }

    fn applied_seq(&mut self) -> Result<u64, StoreError> {
        let q = "SELECT applied_seq FROM materializer WHERE id = 1";
        Ok(from_sql(self.conn.query_row(q, [], |r| r.get(0))?))
    }

    fn load(&mut self, since_ms: u64) -> Result<Snapshot, StoreError> {
        let c = &self.conn;
        let mut s = Snapshot::default();
        let mut st = c.prepare(
            "SELECT id, reserve, min_increment, ends_at_ms, high_bid, high_bidder, bid_count, closed
             FROM auctions",
        )?;
        s.auctions = st.query_map([], auction_row)?.collect::<Result<_, _>>()?;
        let mut st = c.prepare(
            "SELECT id, stock, sold, per_buyer_limit, starts_at_ms, ends_at_ms FROM sales",
        )?;
        s.sales = st.query_map([], sale_row)?.collect::<Result<_, _>>()?;
        let mut st = c.prepare("SELECT sku_id, buyer_id, held FROM holdings")?;
        s.holdings = st
            .query_map([], |r| {
                Ok((
                    from_sql(r.get(0)?),
                    from_sql(r.get(1)?),
                    from_sql(r.get(2)?),
                ))
            })?
            .collect::<Result<_, _>>()?;
        // at_ms is a real clock time (< 2^63), so the SQL comparison is exact.
        // `+at_ms`: a sequential scan of the table, not the at_ms index
        // (a seek into the table per row); sorted by time below.
        let mut st = c.prepare(
            "SELECT auction_id, bid_id, bidder_id, amount, seq, at_ms FROM bids
             WHERE +at_ms >= ?1",
        )?;
        s.bids = st
            .query_map([to_sql(since_ms)], |r| {
                Ok(BidRow {
                    auction_id: from_sql(r.get(0)?),
                    bid_id: from_sql(r.get(1)?),
                    bidder_id: from_sql(r.get(2)?),
                    amount: from_sql(r.get(3)?),
                    seq: from_sql(r.get(4)?),
                    at_ms: from_sql(r.get(5)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(
            "SELECT sku_id, order_id, buyer_id, quantity, sold_after, held_after, at_ms FROM orders
             WHERE +at_ms >= ?1",
        )?;
        s.orders = st
            .query_map([to_sql(since_ms)], |r| {
                Ok(OrderRow {
                    sku_id: from_sql(r.get(0)?),
                    order_id: from_sql(r.get(1)?),
                    buyer_id: from_sql(r.get(2)?),
                    quantity: r.get::<_, i64>(3)? as u32,
                    sold_after: from_sql(r.get(4)?),
                    held_after: from_sql(r.get(5)?),
                    at_ms: from_sql(r.get(6)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        s.sort_logs_by_time();
        Ok(s)
    }

    fn find_key(&mut self, key: Key) -> Result<Option<StoredOutcome>, StoreError> {
        let args = params![to_sql(key.scope), to_sql(key.key)];
        let found = match key.kind {
            KeyKind::Bid => self
                .conn
                .prepare_cached(
                    "SELECT bidder_id, amount, at_ms FROM bids WHERE auction_id = ?1 AND bid_id = ?2",
                )?
                .query_row(args, |r| {
                    Ok(StoredOutcome::Bid {
                        bidder_id: from_sql(r.get(0)?),
                        amount: from_sql(r.get(1)?),
                        at_ms: from_sql(r.get(2)?),
                    })
                }),
            KeyKind::Order => self
                .conn
                .prepare_cached(
                    "SELECT buyer_id, quantity, sold_after, held_after, at_ms FROM orders
                     WHERE sku_id = ?1 AND order_id = ?2",
                )?
                .query_row(args, |r| {
                    Ok(StoredOutcome::Order {
                        buyer_id: from_sql(r.get(0)?),
                        quantity: from_sql(r.get(1)?),
                        sold_after: from_sql(r.get(2)?),
                        held_after: from_sql(r.get(3)?),
                        at_ms: from_sql(r.get(4)?),
                    })
                }),
        };
        match found {
            Ok(f) => Ok(Some(f)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn quarantined_after(&mut self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let rows = self
            .conn
            .prepare_cached("SELECT seq, record FROM quarantine WHERE seq > ?1 ORDER BY seq")?
            .query_map([to_sql(seq)], |r| Ok((from_sql(r.get(0)?), r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn find_sale(&mut self, id: u64) -> Result<Option<FoundSale>, StoreError> {
        // One read transaction: the row and its holdings agree.
        let tx = self.conn.transaction()?;
        let row = tx
            .prepare_cached(
                "SELECT id, stock, sold, per_buyer_limit, starts_at_ms, ends_at_ms
                 FROM sales WHERE id = ?1",
            )?
            .query_row([to_sql(id)], sale_row);
        let row = match row {
            Ok(r) => r,
            Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let holdings = tx
            .prepare_cached("SELECT buyer_id, held FROM holdings WHERE sku_id = ?1")?
            .query_map([to_sql(id)], |r| {
                Ok((from_sql(r.get(0)?), from_sql(r.get(1)?)))
            })?
            .collect::<Result<_, _>>()?;
        tx.commit()?;
        Ok(Some((row, holdings)))
    }

    fn find_auction(&mut self, id: u64) -> Result<Option<AuctionRow>, StoreError> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT id, reserve, min_increment, ends_at_ms, high_bid, high_bidder, bid_count, closed
                 FROM auctions WHERE id = ?1",
            )?
            .query_row([to_sql(id)], auction_row);
        match found {
            Ok(a) => Ok(Some(a)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn sale_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SaleRow> {
    Ok(SaleRow {
        id: from_sql(r.get(0)?),
        stock: from_sql(r.get(1)?),
        sold: from_sql(r.get(2)?),
        per_buyer_limit: r.get::<_, i64>(3)? as u32,
        starts_at_ms: from_sql(r.get(4)?),
        ends_at_ms: from_sql(r.get(5)?),
    })
}

fn auction_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuctionRow> {
    Ok(AuctionRow {
        id: from_sql(r.get(0)?),
        reserve: from_sql(r.get(1)?),
        min_increment: from_sql(r.get(2)?),
        ends_at_ms: from_sql(r.get(3)?),
        high_bid: from_sql(r.get(4)?),
        high_bidder: from_sql(r.get(5)?),
        bid_count: from_sql(r.get(6)?),
        closed: r.get::<_, i64>(7)? != 0,
    })
}

/// The journal file.
pub struct SqliteJournal {
    conn: Connection,
}

impl SqliteJournal {
    pub fn open(path: &str, durable: bool) -> Result<Self, StoreError> {
        let conn = connect(&journal_path(path), durable)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, record BLOB NOT NULL);",
        )?;
        Ok(SqliteJournal { conn })
    }
}

impl Journal for SqliteJournal {
    fn append(
        &mut self,
        seq: u64,
        record: &[u8],
        applied: u64,
        first: bool,
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let sql = if first {
                "INSERT INTO journal (seq, record) VALUES (?1, ?2)"
            } else {
                "INSERT OR IGNORE INTO journal (seq, record) VALUES (?1, ?2)"
            };
            tx.prepare_cached(sql)?
                .execute(params![to_sql(seq), record])?;
            if applied > 0 {
                tx.prepare_cached("DELETE FROM journal WHERE seq <= ?1")?
                    .execute(params![to_sql(applied)])?;
            }
        }
        Ok(tx.commit()?)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn read_after(&mut self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT seq, record FROM journal WHERE seq > ?1 ORDER BY seq")?;
        let rows = st.query_map(params![to_sql(seq)], |r| {
            Ok((from_sql(r.get(0)?), r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn truncate(&mut self, seq: u64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM journal WHERE seq <= ?1", params![to_sql(seq)])?;
        Ok(())
    }

    fn remove(&mut self, seq: u64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM journal WHERE seq = ?1", params![to_sql(seq)])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mutation::Mutation;
    use gavel_protocol::{OpenAuctionRequest, OpenSaleRequest};

    fn temp_db() -> (std::path::PathBuf, SqliteStore) {
        let dir = std::env::temp_dir().join(format!(
            "gavel-sqlite-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("g.db");
        let st = SqliteStore::open(path.to_str().unwrap(), true).unwrap();
        (dir, st)
    }

    #[test]
    fn batch_round_trips_through_load_and_coalesces() {
        let (dir, mut st) = temp_db();
        let mut b = WriteBatch::default();
        b.add(&Mutation::AuctionOpened {
            req: OpenAuctionRequest {
                auction_id: 1,
                reserve: 10,
                min_increment: 0,
                ends_at_ms: 0,
            },
            at_ms: 5,
        });
        for i in 1..=500u64 {
            b.add(&Mutation::BidAccepted {
                auction_id: 1,
                bidder_id: i,
                amount: u64::MAX - 500 + i,
                bid_id: 1000 + i,
                bid_count: i,
                at_ms: 6,
            });
        }
        b.add(&Mutation::SaleOpened {
            req: OpenSaleRequest {
                sku_id: 2,
                stock: 3,
                per_buyer_limit: 2,
                starts_at_ms: 0,
                ends_at_ms: 0,
            },
            at_ms: 5,
        });
        b.add(&Mutation::Purchase {
            sku_id: 2,
            buyer_id: 9,
            quantity: 2,
            order_id: 77,
            sold_after: 2,
            held_after: 2,
            at_ms: 7,
        });
        st.apply(&b, 3, true).unwrap();
        // Applying the same batch again (unknown outcome retried) changes nothing.
        st.apply(&b, 3, false).unwrap();
        assert_eq!(st.applied_seq().unwrap(), 3);
        let rows: i64 = st
            .conn
            .query_row("SELECT count(*) FROM auctions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "500 bids on one auction are one state row");
        let snap = st.load(0).unwrap();
        assert_eq!(snap.auctions.len(), 1);
        let a = snap.auctions[0];
        assert_eq!(
            (a.high_bid, a.high_bidder, a.bid_count),
            (u64::MAX, 500, 500)
        );
        assert_eq!(snap.bids.len(), 500, "every bid is in the log");
        assert_eq!(snap.sales[0].sold, 2);
        assert_eq!(snap.holdings, vec![(2, 9, 2)]);
        assert_eq!(snap.orders.len(), 1);
        assert!(
            st.load(7).unwrap().bids.is_empty(),
            "window filters the log"
        );

        // An oversell is refused by the database itself.
        let mut bad = WriteBatch::default();
        bad.sale_updates.insert(2, 4);
        bad.mutations = 1;
        assert!(st.apply(&bad, 4, true).is_err());
        assert_eq!(st.load(0).unwrap().sales[0].sold, 2, "rolled back");
        assert_eq!(st.applied_seq().unwrap(), 3, "with its sequence");
        drop(st);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn journal_appends_reads_back_and_truncates() {
        let (dir, _) = temp_db();
        let path = dir.join("g.db");
        let mut j = SqliteJournal::open(path.to_str().unwrap(), true).unwrap();
        for seq in 1..=5u64 {
            j.append(seq, &[seq as u8; 3], 0, true).unwrap();
        }
        assert!(
            j.append(5, &[5; 3], 0, true).is_err(),
            "a sequence is used once"
        );
        j.append(5, &[5; 3], 0, false).unwrap();
        j.append(6, &[6; 3], 2, true).unwrap();
        let seqs: Vec<u64> = j.read_after(0).unwrap().iter().map(|r| r.0).collect();
        assert_eq!(
            seqs,
            vec![3, 4, 5, 6],
            "applied records removed with an append"
        );
        assert_eq!(
            j.read_after(4).unwrap(),
            vec![(5, vec![5; 3]), (6, vec![6; 3])]
        );
        j.truncate(6).unwrap();
        assert!(j.read_after(0).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
