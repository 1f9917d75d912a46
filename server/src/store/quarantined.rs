//! Accepted keys of quarantined journal records, for the key lookups.
//!
//! A journal record the tables refuse is set aside in the `quarantine`
//! table and counted as applied (see `store::materializer`), so the keys it
//! holds may leave a shard's memory like any other: a retry must still find
//! them. The lookup thread asks here when the bid/order log lacks a key:
//! the records quarantined since it last looked are read (`seq` after the
//! last one seen: one indexed read, normally returning nothing) and their
//! accepted bids and purchases kept in a map. Quarantine is an operator
//! alarm, so the map stays tiny.

use std::collections::HashMap;

use super::{journal, BidRow, OrderRow, StoreError, Tables, WriteBatch};
use crate::engine::idempotency::{Key, StoredOutcome};

/// The keys of the quarantined records read so far.
#[derive(Default)]
pub struct QuarantinedKeys {
    /// The last quarantined record read.
    seen_seq: u64,
    keys: HashMap<Key, StoredOutcome>,
}

impl QuarantinedKeys {
    /// `key`'s outcome if a quarantined record holds it (records
    /// quarantined since the last call are read first).
    pub fn find(
        &mut self,
        tables: &mut dyn Tables,
        key: Key,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        for (seq, record) in tables.quarantined_after(self.seen_seq)? {
            self.seen_seq = self.seen_seq.max(seq);
            self.add(seq, &record);
        }
        Ok(self.keys.get(&key).copied())
    }

    fn add(&mut self, seq: u64, record: &[u8]) {
        let mut mutations = Vec::new();
        if let Err(e) = journal::decode(record, &mut mutations) {
            tracing::error!(seq, error = ?e, "a quarantined record does not decode");
            return;
        }
        // The log rows the record would have written, as find_key reads them.
        let mut batch = WriteBatch::default();
        mutations.iter().for_each(|m| batch.add(m));
        let rows = batch.bids.iter().map(BidRow::keyed);
        self.keys
            .extend(rows.chain(batch.orders.iter().map(OrderRow::keyed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::idempotency::KeyKind;
    use crate::engine::mutation::Mutation;
    use crate::store::sqlite::SqliteStore;

    fn bid(bid_id: u64) -> Mutation {
        Mutation::BidAccepted {
            auction_id: 3,
            bidder_id: 7,
            amount: 100 + bid_id,
            bid_id,
            bid_count: 1,
            at_ms: 5,
        }
    }

    fn key(kind: KeyKind, scope: u64, key: u64) -> Key {
        Key { kind, scope, key }
    }

    /// The keys of records quarantined before and after the first lookup
    /// are found, with the outcome the log would have held.
    #[test]
    fn keys_of_quarantined_records_are_found() {
        let dir = std::env::temp_dir().join(format!("gavel-q-{}", rand::random::<u64>()));
        let path = dir.join("g.db");
        let mut tables = SqliteStore::open(path.to_str().unwrap(), true).unwrap();
        let purchase = Mutation::Purchase {
            sku_id: 4,
            buyer_id: 8,
            quantity: 2,
            order_id: 9,
            sold_after: 2,
            held_after: 2,
            at_ms: 6,
        };
        let mut record = Vec::new();
        journal::encode(&[bid(1), purchase], &mut record);
        tables.quarantine(10, &record, "refused").unwrap();
        let mut q = QuarantinedKeys::default();
        let found = q.find(&mut tables, key(KeyKind::Bid, 3, 1)).unwrap();
        let want = StoredOutcome::Bid {
            bidder_id: 7,
            amount: 101,
            at_ms: 5,
        };
        assert_eq!(found, Some(want));
        let order = q.find(&mut tables, key(KeyKind::Order, 4, 9)).unwrap();
        assert!(matches!(
            order,
            Some(StoredOutcome::Order {
                quantity: 2,
                held_after: 2,
                ..
            })
        ));
        assert_eq!(q.find(&mut tables, key(KeyKind::Bid, 3, 2)).unwrap(), None);
        record.clear();
        journal::encode(&[bid(2)], &mut record);
        tables.quarantine(11, &record, "refused").unwrap();
        assert!(q
            .find(&mut tables, key(KeyKind::Bid, 3, 2))
            .unwrap()
            .is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
