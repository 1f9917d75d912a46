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
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

use super::{
    from_sql, to_sql, AuctionRow, BidRow, OrderRow, SaleRow, Snapshot, Store, StoreError,
    WriteBatch,
};

const SCHEMA: &str = include_str!("../../../schema.sql");
/// Serialises schema application across nodes starting at once.
const SCHEMA_LOCK: i64 = 0x6761_7665_6c00_0001;

pub struct PgStore {
    rt: TokioRuntime,
    pool: Pool,
    timeout: Duration,
}

fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres(e.to_string())
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

    async fn write(pool: &Pool, b: &WriteBatch, first_attempt: bool) -> Result<(), StoreError> {
        let mut c = pool.get().await.map_err(pg)?;
        let tx = c.transaction().await.map_err(pg)?;
        if !b.auctions_opened.is_empty() {
            let cols: [Vec<i64>; 4] = [
                b.auctions_opened
                    .iter()
                    .map(|o| to_sql(o.auction_id))
                    .collect(),
                b.auctions_opened
                    .iter()
                    .map(|o| to_sql(o.reserve))
                    .collect(),
                b.auctions_opened
                    .iter()
                    .map(|o| to_sql(o.min_increment))
                    .collect(),
                b.auctions_opened
                    .iter()
                    .map(|o| to_sql(o.ends_at_ms))
                    .collect(),
            ];
            let st = tx
                .prepare_cached(
                    "INSERT INTO auctions (id, reserve, min_increment, ends_at_ms)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                     ON CONFLICT (id) DO NOTHING",
                )
                .await
                .map_err(pg)?;
            tx.execute(&st, &[&cols[0], &cols[1], &cols[2], &cols[3]])
                .await
                .map_err(pg)?;
        }
        if !b.sales_opened.is_empty() {
            let s = &b.sales_opened;
            let cols: [Vec<i64>; 5] = [
                s.iter().map(|o| to_sql(o.sku_id)).collect(),
                s.iter().map(|o| to_sql(o.stock)).collect(),
                s.iter().map(|o| o.per_buyer_limit as i64).collect(),
                s.iter().map(|o| to_sql(o.starts_at_ms)).collect(),
                s.iter().map(|o| to_sql(o.ends_at_ms)).collect(),
            ];
            let st = tx
                .prepare_cached(
                    "INSERT INTO sales (id, stock, per_buyer_limit, starts_at_ms, ends_at_ms)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
                     ON CONFLICT (id) DO NOTHING",
                )
                .await
                .map_err(pg)?;
            tx.execute(&st, &[&cols[0], &cols[1], &cols[2], &cols[3], &cols[4]])
                .await
                .map_err(pg)?;
        }
        if !b.auction_updates.is_empty() {
            let u: Vec<_> = b.auction_updates.values().collect();
            let cols: [Vec<i64>; 4] = [
                u.iter().map(|u| to_sql(u.id)).collect(),
                u.iter().map(|u| to_sql(u.high_bid)).collect(),
                u.iter().map(|u| to_sql(u.high_bidder)).collect(),
                u.iter().map(|u| to_sql(u.bid_count)).collect(),
            ];
            let st = tx
                .prepare_cached(
                    "UPDATE auctions AS a
                     SET high_bid = u.high_bid, high_bidder = u.high_bidder, bid_count = u.bid_count
                     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                          AS u(id, high_bid, high_bidder, bid_count)
                     WHERE a.id = u.id AND a.bid_count < u.bid_count",
                )
                .await
                .map_err(pg)?;
            tx.execute(&st, &[&cols[0], &cols[1], &cols[2], &cols[3]])
                .await
                .map_err(pg)?;
        }
        if !b.bids.is_empty() && first_attempt {
            // The common case: binary COPY, the fastest way in. A duplicate
            // key aborts the transaction and the retry takes the path below.
            let sink = tx
                .copy_in("COPY bids (auction_id, bid_id, bidder_id, amount, seq, at_ms) FROM STDIN BINARY")
                .await
                .map_err(pg)?;
            let w = BinaryCopyInWriter::new(sink, &[Type::INT8; 6]);
            let mut w = std::pin::pin!(w);
            for r in &b.bids {
                w.as_mut()
                    .write(&[
                        &to_sql(r.auction_id),
                        &to_sql(r.bid_id),
                        &to_sql(r.bidder_id),
                        &to_sql(r.amount),
                        &to_sql(r.seq),
                        &to_sql(r.at_ms),
                    ])
                    .await
                    .map_err(pg)?;
            }
            w.finish().await.map_err(pg)?;
        } else if !b.bids.is_empty() {
            // A retry (the previous attempt's outcome may be unknown): skip
            // rows already there.
            let r = &b.bids;
            let cols: [Vec<i64>; 6] = [
                r.iter().map(|r| to_sql(r.auction_id)).collect(),
                r.iter().map(|r| to_sql(r.bid_id)).collect(),
                r.iter().map(|r| to_sql(r.bidder_id)).collect(),
                r.iter().map(|r| to_sql(r.amount)).collect(),
                r.iter().map(|r| to_sql(r.seq)).collect(),
                r.iter().map(|r| to_sql(r.at_ms)).collect(),
            ];
            let st = tx
                .prepare_cached(
                    "INSERT INTO bids (auction_id, bid_id, bidder_id, amount, seq, at_ms)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
                     ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(pg)?;
            tx.execute(
                &st,
                &[&cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5]],
            )
            .await
            .map_err(pg)?;
        }
        if !b.auctions_closed.is_empty() {
            let ids: Vec<i64> = b.auctions_closed.iter().map(|i| to_sql(*i)).collect();
            let st = tx
                .prepare_cached("UPDATE auctions SET closed = true WHERE id = ANY($1::bigint[])")
                .await
                .map_err(pg)?;
            tx.execute(&st, &[&ids]).await.map_err(pg)?;
        }
        if !b.sale_updates.is_empty() {
            let ids: Vec<i64> = b.sale_updates.keys().map(|i| to_sql(*i)).collect();
            let sold: Vec<i64> = b.sale_updates.values().map(|i| to_sql(*i)).collect();
            let st = tx
                .prepare_cached(
                    "UPDATE sales AS s SET sold = u.sold
                     FROM unnest($1::bigint[], $2::bigint[]) AS u(id, sold)
                     WHERE s.id = u.id AND s.sold < u.sold",
                )
                .await
                .map_err(pg)?;
            tx.execute(&st, &[&ids, &sold]).await.map_err(pg)?;
        }
        if !b.holdings.is_empty() {
            let skus: Vec<i64> = b.holdings.keys().map(|k| to_sql(k.0)).collect();
            let buyers: Vec<i64> = b.holdings.keys().map(|k| to_sql(k.1)).collect();
            let held: Vec<i64> = b.holdings.values().map(|v| to_sql(*v)).collect();
            let st = tx
                .prepare_cached(
                    "INSERT INTO holdings (sku_id, buyer_id, held)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
                     ON CONFLICT (sku_id, buyer_id) DO UPDATE SET held = EXCLUDED.held
                     WHERE holdings.held < EXCLUDED.held",
                )
                .await
                .map_err(pg)?;
            tx.execute(&st, &[&skus, &buyers, &held])
                .await
                .map_err(pg)?;
        }
        if !b.orders.is_empty() && first_attempt {
            let sink = tx
                .copy_in("COPY orders (sku_id, order_id, buyer_id, quantity, sold_after, held_after, at_ms) FROM STDIN BINARY")
                .await
                .map_err(pg)?;
            let w = BinaryCopyInWriter::new(sink, &[Type::INT8; 7]);
            let mut w = std::pin::pin!(w);
            for o in &b.orders {
                w.as_mut()
                    .write(&[
                        &to_sql(o.sku_id),
                        &to_sql(o.order_id),
                        &to_sql(o.buyer_id),
                        &(o.quantity as i64),
                        &to_sql(o.sold_after),
                        &to_sql(o.held_after),
                        &to_sql(o.at_ms),
                    ])
                    .await
                    .map_err(pg)?;
            }
            w.finish().await.map_err(pg)?;
        } else if !b.orders.is_empty() {
            let o = &b.orders;
            let cols: [Vec<i64>; 7] = [
                o.iter().map(|o| to_sql(o.sku_id)).collect(),
                o.iter().map(|o| to_sql(o.order_id)).collect(),
                o.iter().map(|o| to_sql(o.buyer_id)).collect(),
                o.iter().map(|o| o.quantity as i64).collect(),
                o.iter().map(|o| to_sql(o.sold_after)).collect(),
                o.iter().map(|o| to_sql(o.held_after)).collect(),
                o.iter().map(|o| to_sql(o.at_ms)).collect(),
            ];
            let st = tx
                .prepare_cached(
                    "INSERT INTO orders (sku_id, order_id, buyer_id, quantity, sold_after, held_after, at_ms)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                     ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(pg)?;
            tx.execute(
                &st,
                &[
                    &cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &cols[6],
                ],
            )
            .await
            .map_err(pg)?;
        }
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
            s.auctions.push(AuctionRow {
                id: from_sql(r.get(0)),
                reserve: from_sql(r.get(1)),
                min_increment: from_sql(r.get(2)),
                ends_at_ms: from_sql(r.get(3)),
                high_bid: from_sql(r.get(4)),
                high_bidder: from_sql(r.get(5)),
                bid_count: from_sql(r.get(6)),
                closed: r.get(7),
            });
        }
        for r in c
            .query(
                "SELECT id, stock, sold, per_buyer_limit, starts_at_ms, ends_at_ms FROM sales",
                &[],
            )
            .await
            .map_err(pg)?
        {
            s.sales.push(SaleRow {
                id: from_sql(r.get(0)),
                stock: from_sql(r.get(1)),
                sold: from_sql(r.get(2)),
                per_buyer_limit: r.get::<_, i64>(3) as u32,
                starts_at_ms: from_sql(r.get(4)),
                ends_at_ms: from_sql(r.get(5)),
            });
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

impl Store for PgStore {
    fn commit(&mut self, batch: &WriteBatch, first_attempt: bool) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(Self::write(pool, batch, first_attempt))
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let c = pool.get().await.map_err(pg)?;
            c.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
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
