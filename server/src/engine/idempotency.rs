//! Remembered outcomes of BID and BUY requests, keyed by their idempotency key.
//!
//! Keys are scoped to their auction or SKU. An entry keeps the request's
//! fields (to detect a conflicting reuse) and the RESULT first sent (to replay
//! it). Memory is bounded: entries leave in arrival order once older than the
//! window, or earliest-first when the count cap is reached.
//!
//! The map is `griddle`'s incrementally resizing hash map: a shard holds
//! millions of keys, and a std `HashMap` rehashes them all in one insert
//! when it grows (measured: a 600 ms stall at 8M keys, 12 ms with griddle),
//! which would freeze every auction on the shard.

use std::collections::VecDeque;

use griddle::HashMap;

use gavel_protocol::ResultPayload;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Bid,
    Order,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: KeyKind,
    /// auction_id or sku_id
    pub scope: u64,
    /// bid_id or order_id
    pub key: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// (bidder, amount) or (buyer, quantity)
    fields: (u64, u64),
    outcome: ResultPayload,
    at_ms: u64,
}

/// Result of looking a key up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Replay(ResultPayload),
    Conflict,
}

pub struct IdempotencyStore {
    map: HashMap<Key, Entry, ahash::RandomState>,
    order: VecDeque<(u64, Key)>,
    window_ms: u64,
    max_keys: usize,
}

impl IdempotencyStore {
    pub fn new(window_ms: u64, max_keys: usize) -> Self {
        IdempotencyStore {
            map: HashMap::default(),
            order: VecDeque::new(),
            window_ms,
            max_keys: max_keys.max(1),
        }
    }

    pub fn check(&self, key: Key, fields: (u64, u64)) -> Seen {
        match self.map.get(&key) {
            None => Seen::New,
            Some(e) if e.fields == fields => Seen::Replay(e.outcome),
            Some(_) => Seen::Conflict,
        }
    }

    pub fn remember(&mut self, key: Key, fields: (u64, u64), outcome: ResultPayload, at_ms: u64) {
        while self.map.len() >= self.max_keys {
            if !self.evict_one() {
                break;
            }
        }
        if self
            .map
            .insert(
                key,
                Entry {
                    fields,
                    outcome,
                    at_ms,
                },
            )
            .is_none()
        {
            self.order.push_back((at_ms, key));
        }
    }

    /// Drops entries older than the window.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, _)) = self.order.front() {
            if at.saturating_add(self.window_ms) > now_ms {
                break;
            }
            self.evict_one();
        }
    }

    fn evict_one(&mut self) -> bool {
        match self.order.pop_front() {
            Some((_, k)) => {
                self.map.remove(&k);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_protocol::Status;

    fn k(key: u64) -> Key {
        Key {
            kind: KeyKind::Bid,
            scope: 1,
            key,
        }
    }

    #[test]
    fn replay_conflict_and_scope() {
        let mut s = IdempotencyStore::new(1000, 10);
        let r = ResultPayload::new(Status::Ok, 5, 6);
        assert_eq!(s.check(k(1), (6, 5)), Seen::New);
        s.remember(k(1), (6, 5), r, 0);
        assert_eq!(s.check(k(1), (6, 5)), Seen::Replay(r));
        assert_eq!(s.check(k(1), (6, 7)), Seen::Conflict);
        let other_scope = Key { scope: 2, ..k(1) };
        assert_eq!(s.check(other_scope, (6, 5)), Seen::New);
        let other_kind = Key {
            kind: KeyKind::Order,
            ..k(1)
        };
        assert_eq!(s.check(other_kind, (6, 5)), Seen::New);
    }

    #[test]
    fn expires_by_age_and_caps_count() {
        let mut s = IdempotencyStore::new(100, 3);
        let r = ResultPayload::new(Status::Ok, 0, 0);
        for i in 0..3 {
            s.remember(k(i), (0, 0), r, i * 10);
        }
        s.remember(k(3), (0, 0), r, 30);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.check(k(0), (0, 0)),
            Seen::New,
            "oldest evicted at the cap"
        );
        s.expire(115);
        assert_eq!(s.len(), 2, "keys at 10 expired at 110");
        s.expire(1000);
        assert!(s.is_empty());
    }
}
