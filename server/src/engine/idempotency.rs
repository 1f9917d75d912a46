//! Remembered outcomes of BID and BUY requests, keyed by their idempotency key.
//!
//! Keys are scoped to their auction or SKU. An entry keeps the request's
//! fields (to detect a conflicting reuse) and the RESULT first sent (to replay
//! it). Two budgets, because the contract treats the two kinds differently:
//!
//! - an *accepted* key (status OK) is never forgotten inside the window:
//!   when its budget is full, a new keyed request is refused (`Seen::Full`,
//!   answered BUSY) rather than an old key dropped;
//! - a *rejected* key may be dropped early (a retry of it is evaluated
//!   afresh, which can never apply it twice): its own, smaller budget drops
//!   the oldest first.
//!
//! Both leave in arrival order once older than the window.
//!
//! The map is `griddle`'s incrementally resizing hash map: a shard holds
//! millions of keys, and a std `HashMap` rehashes them all in one insert
//! when it grows (measured: a 600 ms stall at 8M keys, 12 ms with griddle),
//! which would freeze every auction on the shard.

use std::collections::VecDeque;

use griddle::HashMap;

use gavel_protocol::{ResultPayload, Status};

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
    /// New, but no room is left to remember it if it is accepted: refuse it
    /// (BUSY) without executing it.
    Full,
}

/// How many keys of each kind a store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBudget {
    pub accepted: usize,
    pub rejected: usize,
}

pub struct IdempotencyStore {
    map: HashMap<Key, Entry, ahash::RandomState>,
    /// Accepted keys in arrival order (never dropped before the window ends).
    accepted: VecDeque<(u64, Key)>,
    /// Rejected keys in arrival order (dropped oldest first at their cap).
    rejected: VecDeque<(u64, Key)>,
    window_ms: u64,
    budget: KeyBudget,
}

impl IdempotencyStore {
    pub fn new(window_ms: u64, budget: KeyBudget) -> Self {
        IdempotencyStore {
            map: HashMap::default(),
            accepted: VecDeque::new(),
            rejected: VecDeque::new(),
            window_ms,
            budget: KeyBudget {
                accepted: budget.accepted.max(1),
                rejected: budget.rejected.max(1),
            },
        }
    }

    pub fn check(&self, key: Key, fields: (u64, u64)) -> Seen {
        match self.map.get(&key) {
            None if self.accepted.len() >= self.budget.accepted => Seen::Full,
            None => Seen::New,
            Some(e) if e.fields == fields => Seen::Replay(e.outcome),
            Some(_) => Seen::Conflict,
        }
    }

    /// Remembers a key's first outcome. An accepted key is kept even past
    /// the budget (recovery restores every accepted key of the window);
    /// `check` then refuses new keys until old ones expire.
    pub fn remember(&mut self, key: Key, fields: (u64, u64), outcome: ResultPayload, at_ms: u64) {
        let accepted = outcome.status == Status::Ok;
        if !accepted {
            while self.rejected.len() >= self.budget.rejected {
                let Some((_, old)) = self.rejected.pop_front() else {
                    break;
                };
                self.map.remove(&old);
            }
        }
        let e = Entry {
            fields,
            outcome,
            at_ms,
        };
        if self.map.insert(key, e).is_some() {
            debug_assert!(false, "a key is remembered once: {key:?}");
            return;
        }
        let queue = if accepted {
            &mut self.accepted
        } else {
            &mut self.rejected
        };
        queue.push_back((at_ms, key));
    }

    /// Drops entries older than the window.
    pub fn expire(&mut self, now_ms: u64) {
        for queue in [&mut self.accepted, &mut self.rejected] {
            while let Some(&(at, k)) = queue.front() {
                if at.saturating_add(self.window_ms) > now_ms {
                    break;
                }
                queue.pop_front();
                self.map.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn accepted_len(&self) -> usize {
        self.accepted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(key: u64) -> Key {
        Key {
            kind: KeyKind::Bid,
            scope: 1,
            key,
        }
    }

    const OK: ResultPayload = ResultPayload::new(Status::Ok, 5, 6);
    const LOST: ResultPayload = ResultPayload::new(Status::Outbid, 9, 9);

    fn budget(accepted: usize, rejected: usize) -> KeyBudget {
        KeyBudget { accepted, rejected }
    }

    #[test]
    fn replay_conflict_and_scope() {
        let mut s = IdempotencyStore::new(1000, budget(10, 10));
        assert_eq!(s.check(k(1), (6, 5)), Seen::New);
        s.remember(k(1), (6, 5), OK, 0);
        assert_eq!(s.check(k(1), (6, 5)), Seen::Replay(OK));
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
    fn accepted_keys_are_never_evicted_before_the_window_ends() {
        let mut s = IdempotencyStore::new(100, budget(3, 2));
        for i in 0..3 {
            s.remember(k(i), (0, 0), OK, i * 10);
        }
        assert_eq!(s.check(k(3), (0, 0)), Seen::Full, "no room: refuse");
        for i in 0..3 {
            assert_eq!(s.check(k(i), (0, 0)), Seen::Replay(OK), "still replays");
        }
        s.expire(105);
        assert_eq!(s.accepted_len(), 2, "the key at 0 expired at 100");
        assert_eq!(s.check(k(3), (0, 0)), Seen::New);
        s.expire(1000);
        assert!(s.is_empty());
    }

    #[test]
    fn rejected_keys_have_their_own_budget_and_go_first() {
        let mut s = IdempotencyStore::new(100, budget(2, 2));
        s.remember(k(0), (0, 0), OK, 0);
        for i in 1..=5 {
            s.remember(k(i), (0, 0), LOST, i);
        }
        assert_eq!(s.len(), 3, "one accepted, two newest rejected");
        assert_eq!(s.check(k(0), (0, 0)), Seen::Replay(OK));
        assert_eq!(s.check(k(1), (0, 0)), Seen::New, "oldest rejected dropped");
        assert_eq!(s.check(k(5), (0, 0)), Seen::Replay(LOST));
        // A flood of rejected outcomes never pushes an accepted key out.
        for i in 10..1000 {
            s.remember(k(i), (0, 0), LOST, 50);
        }
        assert_eq!(s.check(k(0), (0, 0)), Seen::Replay(OK));
    }
}
