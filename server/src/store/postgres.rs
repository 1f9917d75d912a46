//! PostgreSQL store: `tokio-postgres` through a small `deadpool-postgres`
//! pool, driven by a current-thread Tokio runtime owned by the batch writer's
//! thread, so the event loops and shards stay synchronous.
//!
//! A batch is one transaction of a handful of set-based statements: logs are
//! appended with binary `COPY` (on a retry, whose previous outcome may be
//! unknown, with `INSERT … SELECT FROM unnest($1::bigint[], …) ON CONFLICT DO
//! NOTHING`), state rows are updated from `unnest` arrays guarded by their
//! version column. Each
//! statement costs one round trip whatever the batch size, which is why
//! batching wins (one-row commits run at ~15k rows/s here, unnest batches at
//! hundreds of thousands).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::runtime::Runtime as TokioRuntime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

use super::{
    from_sql, to_sql, AuctionRow, BidRow, FoundSale, Journal, OrderRow, SaleRow, Snapshot,
    StoreError, Tables, WriteBatch,
};
use crate::engine::idempotency::{Key, KeyKind, StoredOutcome};

const SCHEMA: &str = include_str!("../../../schema.sql");
/// Serialises schema application across nodes starting at once.
const SCHEMA_LOCK: i64 = 0x6761_7665_6c00_0001;

pub struct PgStore {
    rt: TokioRuntime,
    pool: Pool,
    timeout: Duration,
}

/// A PostgreSQL error, with its SQLSTATE when the server sent one (it
/// tells a constraint violation from a lost connection).
fn pg<E: std::error::Error + 'static>(e: E) -> StoreError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(db) = err
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|p| p.as_db_error())
        {
            return StoreError::Postgres {
                message: format!("{}: {}", db.code().code(), db.message()),
                sqlstate: Some(db.code().code().to_string()),
            };
        }
        source = err.source();
    }
    StoreError::Postgres {
        message: e.to_string(),
        sqlstate: None,
    }
}

impl PgStore {
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("tokio runtime: {e}")))?;
        let mut cfg: tokio_postgres::Config = url.parse().map_err(pg)?;
        cfg.connect_timeout(timeout);
        cfg.application_name("gavel-server");
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(2)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(pg)?;
        let store = PgStore { rt, pool, timeout };
        store.run(async {
            let mut c = store.pool.get().await.map_err(pg)?;
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await
                .map_err(pg)?;
            tx.batch_execute(SCHEMA).await.map_err(pg)?;
            tx.commit().await.map_err(pg)
        })?;
        Ok(store)
    }

    /// Runs `f` on the runtime, bounded by the store timeout.
    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let t = self.timeout;
        self.rt.block_on(async move {
            match tokio::time::timeout(t, f).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout(t)),
            }
        })
    }

    /// One batch, one transaction: opens, state updates, log appends and
    /// the materializer's progress.
    async fn write(
        pool: &Pool,
        b: &WriteBatch,
        applied_seq: u64,
        first_attempt: bool,
    ) -> Result<(), StoreError> {
        let mut c = pool.get().await.map_err(pg)?;
        let tx = c.transaction().await.map_err(pg)?;
        let opened = &b.auctions_opened;
        let cols = [
            col(opened, |o| o.auction_id),
            col(opened, |o| o.reserve),
            col(opened, |o| o.min_increment),
            col(opened, |o| o.ends_at_ms),
        ];
        exec_unnest(&tx, INSERT_AUCTIONS, &cols).await?;
        let s = &b.sales_opened;
        let cols = [
            col(s, |o| o.sku_id),
            col(s, |o| o.stock),
            col(s, |o| o.per_buyer_limit as u64),
            col(s, |o| o.starts_at_ms),
            col(s, |o| o.ends_at_ms),
        ];
        exec_unnest(&tx, INSERT_SALES, &cols).await?;
        let u: Vec<_> = b.auction_updates.values().copied().collect();
        let cols = [
            col(&u, |u| u.id),
            col(&u, |u| u.high_bid),
            col(&u, |u| u.high_bidder),
            col(&u, |u| u.bid_count),
        ];
        exec_unnest(&tx, UPDATE_AUCTIONS, &cols).await?;
        append_log(
            &tx,
            &bid_columns(&b.bids),
            first_attempt,
            COPY_BIDS,
            INSERT_BIDS,
        )
        .await?;
        exec_unnest(&tx, CLOSE_AUCTIONS, &[col(&b.auctions_closed, |i| *i)]).await?;
        let cols = [
            b.sale_updates.keys().map(|i| to_sql(*i)).collect(),
            b.sale_updates.values().map(|i| to_sql(*i)).collect(),
        ];
        exec_unnest(&tx, UPDATE_SALES, &cols).await?;
        let cols = [
            b.holdings.keys().map(|k| to_sql(k.0)).collect(),
            b.holdings.keys().map(|k| to_sql(k.1)).collect(),
            b.holdings.values().map(|v| to_sql(*v)).collect(),
        ];
        exec_unnest(&tx, UPSERT_HOLDINGS, &cols).await?;
        let orders = order_columns(&b.orders);
        append_log(&tx, &orders, first_attempt, COPY_ORDERS, INSERT_ORDERS).await?;
        let st = tx.prepare_cached(SET_APPLIED).await.map_err(pg)?;
        tx.execute(&st, &[&to_sql(applied_seq)]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn read(pool: &Pool, since_ms: u64) -> Result<Snapshot, StoreError> {
        let c = pool.get().await.map_err(pg)?;
        let mut s = Snapshot::default();
        for r in c
            .query(
                "SELECT id, reserve, min_increment, ends_at_ms, high_bid, high_bidder, bid_count, closed
                 FROM auctions",
                &[],
            )
            .await
            .map_err(pg)?
        {
            s.auctions.push(auction_row(&r));
        }
        for r in c
            .query(
                "SELECT id, stock, sold, per_buyer_limit, starts_at_ms, ends_at_ms FROM sales",
                &[],
            )
            .await
            .map_err(pg)?
        {
            s.sales.push(sale_row(&r));
        }
        for r in c
            .query("SELECT sku_id, buyer_id, held FROM holdings", &[])
            .await
            .map_err(pg)?
        {
            s.holdings
                .push((from_sql(r.get(0)), from_sql(r.get(1)), from_sql(r.get(2))));
        }
        let since = to_sql(since_ms);
        for r in c
            .query(
                "SELECT auction_id, bid_id, bidder_id, amount, seq, at_ms FROM bids
                 WHERE at_ms >= $1 ORDER BY at_ms, auction_id, seq",
                &[&since],
            )
            .await
            .map_err(pg)?
        {
            s.bids.push(BidRow {
                auction_id: from_sql(r.get(0)),
                bid_id: from_sql(r.get(1)),
                bidder_id: from_sql(r.get(2)),
                amount: from_sql(r.get(3)),
                seq: from_sql(r.get(4)),
                at_ms: from_sql(r.get(5)),
            });
        }
        for r in c
            .query(
                "SELECT sku_id, order_id, buyer_id, quantity, sold_after, held_after, at_ms FROM orders
                 WHERE at_ms >= $1 ORDER BY at_ms, sku_id, sold_after",
                &[&since],
            )
            .await
            .map_err(pg)?
        {
            s.orders.push(OrderRow {
                sku_id: from_sql(r.get(0)),
                order_id: from_sql(r.get(1)),
                buyer_id: from_sql(r.get(2)),
                quantity: r.get::<_, i64>(3) as u32,
                sold_after: from_sql(r.get(4)),
                held_after: from_sql(r.get(5)),
                at_ms: from_sql(r.get(6)),
            });
        }
        Ok(s)
    }
}

impl PgStore {
    /// Runs one statement with `params` on a pooled connection.
    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let c = pool.get().await.map_err(pg)?;
            let st = c.prepare_cached(sql).await.map_err(pg)?;
            c.execute(&st, params).await.map_err(pg)
        })
    }
}

impl Journal for PgStore {
    fn append(
        &mut self,
        seq: u64,
        record: &[u8],
        applied: u64,
        first: bool,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut c = pool.get().await.map_err(pg)?;
            let tx = c.transaction().await.map_err(pg)?;
            let sql = if first { APPEND } else { APPEND_AGAIN };
            let st = tx.prepare_cached(sql).await.map_err(pg)?;
            tx.execute(&st, &[&to_sql(seq), &record])
                .await
                .map_err(pg)?;
            if applied > 0 {
                let st = tx.prepare_cached(TRUNCATE).await.map_err(pg)?;
                tx.execute(&st, &[&to_sql(applied)]).await.map_err(pg)?;
            }
            tx.commit().await.map_err(pg)
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let c = pool.get().await.map_err(pg)?;
            c.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        })
    }

    fn read_after(&mut self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let pool = &self.pool;
        let t = self.timeout.max(Duration::from_secs(60));
        self.rt.block_on(async move {
            let read = async {
                let c = pool.get().await.map_err(pg)?;
                let rows = c.query(READ_AFTER, &[&to_sql(seq)]).await.map_err(pg)?;
                Ok(rows
                    .iter()
                    .map(|r| (from_sql(r.get(0)), r.get(1)))
                    .collect())
            };
            tokio::time::timeout(t, read)
                .await
                .unwrap_or(Err(StoreError::Timeout(t)))
        })
    }

    fn truncate(&mut self, seq: u64) -> Result<(), StoreError> {
        self.execute(TRUNCATE, &[&to_sql(seq)]).map(drop)
    }

    fn remove(&mut self, seq: u64) -> Result<(), StoreError> {
        self.execute("DELETE FROM journal WHERE seq = $1", &[&to_sql(seq)])
            .map(drop)
    }
}

impl Tables for PgStore {
    fn apply(&mut self, batch: &WriteBatch, seq: u64, first: bool) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(Self::write(pool, batch, seq, first))
    }

    fn quarantine(&mut self, seq: u64, record: &[u8], error: &str) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut c = pool.get().await.map_err(pg)?;
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute(QUARANTINE, &[&to_sql(seq), &record, &error])
                .await
                .map_err(pg)?;
            tx.execute(SET_APPLIED, &[&to_sql(seq)]).await.map_err(pg)?;
            tx.commit().await.map_err(pg)
        })
    }

    fn applied_seq(&mut self) -> Result<u64, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let c = pool.get().await.map_err(pg)?;
            let row = c.query_one(GET_APPLIED, &[]).await.map_err(pg)?;
            Ok(from_sql(row.get(0)))
        })
    }

    fn find_key(&mut self, key: Key) -> Result<Option<StoredOutcome>, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let c = pool.get().await.map_err(pg)?;
            let (scope, k) = (to_sql(key.scope), to_sql(key.key));
            Ok(match key.kind {
                KeyKind::Bid => {
                    let st = c.prepare_cached(FIND_BID).await.map_err(pg)?;
                    c.query_opt(&st, &[&scope, &k])
                        .await
                        .map_err(pg)?
                        .map(|r| StoredOutcome::Bid {
                            bidder_id: from_sql(r.get(0)),
                            amount: from_sql(r.get(1)),
                            at_ms: from_sql(r.get(2)),
                        })
                }
                KeyKind::Order => {
                    let st = c.prepare_cached(FIND_ORDER).await.map_err(pg)?;
                    c.query_opt(&st, &[&scope, &k]).await.map_err(pg)?.map(|r| {
                        StoredOutcome::Order {
                            buyer_id: from_sql(r.get(0)),
                            quantity: from_sql(r.get(1)),
                            sold_after: from_sql(r.get(2)),
                            held_after: from_sql(r.get(3)),
                            at_ms: from_sql(r.get(4)),
                        }
                    })
                }
            })
        })
    }

    fn find_auction(&mut self, id: u64) -> Result<Option<AuctionRow>, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let c = pool.get().await.map_err(pg)?;
            let st = c.prepare_cached(FIND_AUCTION).await.map_err(pg)?;
            let row = c.query_opt(&st, &[&to_sql(id)]).await.map_err(pg)?;
            Ok(row.as_ref().map(auction_row))
        })
    }

    fn quarantined_after(&mut self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let c = pool.get().await.map_err(pg)?;
            let st = c.prepare_cached(QUARANTINED_AFTER).await.map_err(pg)?;
            let rows = c.query(&st, &[&to_sql(seq)]).await.map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| (from_sql(r.get(0)), r.get(1)))
                .collect())
        })
    }

    fn find_sale(&mut self, id: u64) -> Result<Option<FoundSale>, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut c = pool.get().await.map_err(pg)?;
            // One snapshot: the row and its holdings agree.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg)?;
            let st = tx.prepare_cached(FIND_SALE).await.map_err(pg)?;
            let Some(row) = tx.query_opt(&st, &[&to_sql(id)]).await.map_err(pg)? else {
                return Ok(None);
            };
            let st = tx.prepare_cached(FIND_HOLDINGS).await.map_err(pg)?;
            let holdings = tx.query(&st, &[&to_sql(id)]).await.map_err(pg)?;
            let holdings = holdings
                .iter()
                .map(|r| (from_sql(r.get(0)), from_sql(r.get(1))))
                .collect();
            tx.commit().await.map_err(pg)?;
            Ok(Some((sale_row(&row), holdings)))
        })
    }

    fn load(&mut self, since_ms: u64) -> Result<Snapshot, StoreError> {
        let pool = &self.pool;
        // Loading may take longer than one commit; allow it a generous bound.
        let t = self.timeout.max(Duration::from_secs(60));
        self.rt.block_on(async move {
            match tokio::time::timeout(t, Self::read(pool, since_ms)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout(t)),
            }
        })
    }
}

const APPEND: &str = "INSERT INTO journal (seq, record) VALUES ($1, $2)";
const APPEND_AGAIN: &str =
    "INSERT INTO journal (seq, record) VALUES ($1, $2) ON CONFLICT (seq) DO NOTHING";
const TRUNCATE: &str = "DELETE FROM journal WHERE seq <= $1";
const READ_AFTER: &str = "SELECT seq, record FROM journal WHERE seq > $1 ORDER BY seq";
const QUARANTINE: &str = "INSERT INTO quarantine (seq, record, error) VALUES ($1, $2, $3)
     ON CONFLICT (seq) DO UPDATE SET record = EXCLUDED.record, error = EXCLUDED.error";
const FIND_BID: &str =
    "SELECT bidder_id, amount, at_ms FROM bids WHERE auction_id = $1 AND bid_id = $2";
const FIND_ORDER: &str = "SELECT buyer_id, quantity, sold_after, held_after, at_ms FROM orders
     WHERE sku_id = $1 AND order_id = $2";
const FIND_AUCTION: &str =
    "SELECT id, reserve, min_increment, ends_at_ms, high_bid, high_bidder, bid_count, closed
     FROM auctions WHERE id = $1";
const QUARANTINED_AFTER: &str = "SELECT seq, record FROM quarantine WHERE seq > $1 ORDER BY seq";
const FIND_SALE: &str =
    "SELECT id, stock, sold, per_buyer_limit, starts_at_ms, ends_at_ms FROM sales WHERE id = $1";
const FIND_HOLDINGS: &str = "SELECT buyer_id, held FROM holdings WHERE sku_id = $1";
const GET_APPLIED: &str = "SELECT applied_seq FROM materializer WHERE id = 1";
const SET_APPLIED: &str =
    "UPDATE materializer SET applied_seq = $1 WHERE id = 1 AND applied_seq < $1";
const INSERT_AUCTIONS: &str = "INSERT INTO auctions (id, reserve, min_increment, ends_at_ms)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
     ON CONFLICT (id) DO NOTHING";
const INSERT_SALES: &str =
    "INSERT INTO sales (id, stock, per_buyer_limit, starts_at_ms, ends_at_ms)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
     ON CONFLICT (id) DO NOTHING";
const UPDATE_AUCTIONS: &str = "UPDATE auctions AS a
     SET high_bid = u.high_bid, high_bidder = u.high_bidder, bid_count = u.bid_count
     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
          AS u(id, high_bid, high_bidder, bid_count)
     WHERE a.id = u.id AND a.bid_count < u.bid_count";
const CLOSE_AUCTIONS: &str = "UPDATE auctions SET closed = true WHERE id = ANY($1::bigint[])";
const UPDATE_SALES: &str = "UPDATE sales AS s SET sold = u.sold
     FROM unnest($1::bigint[], $2::bigint[]) AS u(id, sold)
     WHERE s.id = u.id AND s.sold < u.sold";
const UPSERT_HOLDINGS: &str = "INSERT INTO holdings (sku_id, buyer_id, held)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
     ON CONFLICT (sku_id, buyer_id) DO UPDATE SET held = EXCLUDED.held
     WHERE holdings.held < EXCLUDED.held";
const COPY_BIDS: &str =
    "COPY bids (auction_id, bid_id, bidder_id, amount, seq, at_ms) FROM STDIN BINARY";
const INSERT_BIDS: &str = "INSERT INTO bids (auction_id, bid_id, bidder_id, amount, seq, at_ms)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
     ON CONFLICT DO NOTHING";
const COPY_ORDERS: &str = "COPY orders (sku_id, order_id, buyer_id, quantity, sold_after, held_after, at_ms) FROM STDIN BINARY";
const INSERT_ORDERS: &str = "INSERT INTO orders (sku_id, order_id, buyer_id, quantity, sold_after, held_after, at_ms)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
     ON CONFLICT DO NOTHING";

fn sale_row(r: &tokio_postgres::Row) -> SaleRow {
    SaleRow {
        id: from_sql(r.get(0)),
        stock: from_sql(r.get(1)),
        sold: from_sql(r.get(2)),
        per_buyer_limit: r.get::<_, i64>(3) as u32,
        starts_at_ms: from_sql(r.get(4)),
        ends_at_ms: from_sql(r.get(5)),
    }
}

fn auction_row(r: &tokio_postgres::Row) -> AuctionRow {
    AuctionRow {
        id: from_sql(r.get(0)),
        reserve: from_sql(r.get(1)),
        min_increment: from_sql(r.get(2)),
        ends_at_ms: from_sql(r.get(3)),
        high_bid: from_sql(r.get(4)),
        high_bidder: from_sql(r.get(5)),
        bid_count: from_sql(r.get(6)),
        closed: r.get(7),
    }
}

/// One column of a set-based statement, `u64` stored bit for bit.
fn col<T>(items: &[T], f: impl Fn(&T) -> u64) -> Vec<i64> {
    items.iter().map(|t| to_sql(f(t))).collect()
}

fn bid_columns(r: &[super::BidRow]) -> [Vec<i64>; 6] {
    [
        col(r, |r| r.auction_id),
        col(r, |r| r.bid_id),
        col(r, |r| r.bidder_id),
        col(r, |r| r.amount),
        col(r, |r| r.seq),
        col(r, |r| r.at_ms),
    ]
}

fn order_columns(o: &[super::OrderRow]) -> [Vec<i64>; 7] {
    [
        col(o, |o| o.sku_id),
        col(o, |o| o.order_id),
        col(o, |o| o.buyer_id),
        col(o, |o| o.quantity as u64),
        col(o, |o| o.sold_after),
        col(o, |o| o.held_after),
        col(o, |o| o.at_ms),
    ]
}

/// Runs a statement whose parameters are `bigint[]` columns (one per
/// `$n`); nothing to do when the columns are empty.
async fn exec_unnest(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    cols: &[Vec<i64>],
) -> Result<(), StoreError> {
    if cols.first().is_none_or(Vec::is_empty) {
        return Ok(());
    }
    let st = tx.prepare_cached(sql).await.map_err(pg)?;
    let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute(&st, &params).await.map_err(pg)?;
    Ok(())
}

/// Appends log rows: binary COPY, the fastest way in, on a first attempt
/// (a duplicate key aborts the transaction and the retry takes the other
/// path); on a retry, whose previous outcome may be unknown, an INSERT that
/// skips rows already there.
async fn append_log(
    tx: &deadpool_postgres::Transaction<'_>,
    cols: &[Vec<i64>],
    first_attempt: bool,
    copy_sql: &str,
    insert_sql: &str,
) -> Result<(), StoreError> {
    if !first_attempt {
        return exec_unnest(tx, insert_sql, cols).await;
    }
    let rows = cols.first().map_or(0, Vec::len);
    if rows == 0 {
        return Ok(());
    }
    let sink = tx.copy_in(copy_sql).await.map_err(pg)?;
    let types = vec![Type::INT8; cols.len()];
    let w = BinaryCopyInWriter::new(sink, &types);
    let mut w = std::pin::pin!(w);
    let mut row: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(cols.len());
    for i in 0..rows {
        row.clear();
        row.extend(cols.iter().map(|c| &c[i] as &(dyn ToSql + Sync)));
        w.as_mut().write(&row).await.map_err(pg)?;
    }
    w.finish().await.map_err(pg)?;
    Ok(())
}
