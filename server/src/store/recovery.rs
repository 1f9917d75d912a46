//! Recovery, in two steps: [`replay_journal`] applies the journal's records
//! the tables do not hold yet (the tail the materializer had not reached),
//! then [`restore`] hands the [`Snapshot`] read from the tables to the
//! shards' engines, each row to the shard that owns its key.

use std::collections::HashMap;

use gavel_protocol::ResultPayload;

use super::{
    journal, AuctionRow, BidRow, Journal, OrderRow, SaleRow, Snapshot, StoreError, Tables,
    WriteBatch,
};
use crate::engine::auction::Auction;
use crate::engine::command::{shard_of, Op};
use crate::engine::idempotency::Key;
use crate::engine::mutation::Mutation;
use crate::engine::sale::Sale;
use crate::engine::state::ShardState;

/// Mutations per transaction while replaying.
const REPLAY_BATCH: usize = 200_000;

/// Applies the journal records after the tables' applied sequence, then
/// removes them from the journal. A damaged *last* record is a torn append
/// (a crash mid-write: its commit never completed, so nothing in it was
/// acknowledged) and is dropped; a damaged record followed by good ones is
/// corruption, and the start fails rather than skip acknowledged data.
/// Returns the last journal sequence used (the writer continues after it).
pub fn replay_journal(
    journal: &mut dyn Journal,
    tables: &mut dyn Tables,
) -> Result<u64, StoreError> {
    let applied = tables.applied_seq()?;
    let records = journal.read_after(applied)?;
    let (mut batch, mut ms, mut last) = (WriteBatch::default(), Vec::<Mutation>::new(), applied);
    for (i, (seq, record)) in records.iter().enumerate() {
        ms.clear();
        if let Err(e) = journal::decode(record, &mut ms) {
            if i + 1 < records.len() {
                return Err(StoreError::Other(format!(
                    "journal record {seq} is damaged ({e}) and later records exist: refusing to start"
                )));
            }
            tracing::warn!(seq, error = %e, "dropping a torn journal record at the tail");
            journal.remove(*seq)?;
            break;
        }
        for m in &ms {
            batch.add(m);
        }
        last = *seq;
        if batch.mutations >= REPLAY_BATCH {
            batch.sort_logs();
            tables.apply(&batch, last, false)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        batch.sort_logs();
        tables.apply(&batch, last, false)?;
    }
    if last > applied {
        tracing::info!(
            from = applied + 1,
            to = last,
            "journal tail applied to the tables"
        );
    }
    journal.truncate(last)?;
    Ok(last)
}

/// Hands each shard the rows it owns at `now_ms` (which sales ended, when
/// the auctions were last used).
pub fn restore(states: &mut [ShardState], snap: &Snapshot, now_ms: u64) {
    let n = states.len();
    let auction_shard = |id: u64| shard_of(Op::GetAuction(id).routing_key(), n);
    let sale_shard = |id: u64| shard_of(Op::GetSale(id).routing_key(), n);
    for a in &snap.auctions {
        states[auction_shard(a.id)].restore_auction(auction(a), now_ms);
    }
    for s in &snap.sales {
        states[sale_shard(s.id)].restore_sale(sale(s), now_ms);
    }
    for &(sku, buyer, held) in &snap.holdings {
        if let Some(s) = states[sale_shard(sku)].sale_mut(sku) {
            s.holdings.insert(buyer, held);
        }
    }
    for b in &snap.bids {
        let (key, fields, result) = bid_key(b);
        states[auction_shard(b.auction_id)].restore_key(key, fields, result, b.at_ms);
    }
    states.iter_mut().for_each(ShardState::restored);
    // From the rows, not the shards: a passivated sale is not in memory,
    // but its orders' keys must be.
    let stock: HashMap<u64, u64> = snap.sales.iter().map(|s| (s.id, s.stock)).collect();
    for o in &snap.orders {
        let Some(&stock) = stock.get(&o.sku_id) else {
            continue;
        };
        let (key, fields, result) = order_key(o, stock);
        states[sale_shard(o.sku_id)].restore_key(key, fields, result, o.at_ms);
    }
}

/// An auction row as the engine holds it.
pub(crate) fn auction(r: &AuctionRow) -> Auction {
    let mut a = Auction::new(r.id, r.reserve, r.min_increment, r.ends_at_ms);
    a.high_bid = r.high_bid;
    a.high_bidder = r.high_bidder;
    a.bid_count = r.bid_count;
    a.closed = r.closed;
    a
}

pub(crate) fn sale(r: &SaleRow) -> Sale {
    let mut s = Sale::new(
        r.id,
        r.stock,
        r.per_buyer_limit,
        r.starts_at_ms,
        r.ends_at_ms,
    );
    s.sold = r.sold;
    s
}

/// An accepted bid's key, fields and the RESULT first sent.
fn bid_key(b: &BidRow) -> (Key, (u64, u64), ResultPayload) {
    let (key, stored) = b.keyed();
    let (fields, result) = stored.entry(0);
    (key, fields, result)
}

/// An accepted order's key, fields and the RESULT first sent (units left
/// after it, and the buyer's holding after it).
fn order_key(o: &OrderRow, stock: u64) -> (Key, (u64, u64), ResultPayload) {
    let (key, stored) = o.keyed();
    let (fields, result) = stored.entry(stock);
    (key, fields, result)
}
