//! Remembered outcomes of BID and BUY requests, keyed by their idempotency key.
//!
//! Keys are scoped to their auction or SKU. An entry keeps the request's
//! fields (to detect a conflicting reuse) and the RESULT first sent (to replay
//! it). Two budgets, because the contract treats the two kinds differently:
//!
//! - an *accepted* key (status OK) is never forgotten inside the window.
//!   With a durable store, when its budget is full the oldest accepted keys
//!   whose records the tables already hold *leave memory* for the store:
//!   they go into a filter ([`SpilledKeys`]), and a new key the filter may
//!   hold is answered `Seen::Lookup` — the caller looks it up in the store
//!   before executing. Without a store (nothing to spill to), or while no
//!   old key is in the tables yet, a new keyed request is refused
//!   (`Seen::Full`, answered BUSY) rather than an old key forgotten;
//! - a *rejected* key may be dropped early (a retry of it is evaluated
//!   afresh, which can never apply it twice): its own, smaller budget drops
//!   the oldest first.
//!
//! "The tables hold it" is counted, not guessed: every accepted key
//! remembered fresh gets the next *ordinal* of this shard (the n-th keyed
//! mutation it emitted), and the materializer reports how many of this
//! shard's keyed mutations it has applied ([`IdempotencyStore::keys_applied`]);
//! the writer keeps each shard's mutations in order, so ordinal ≤ applied
//! means the record is in the tables. Keys restored from the tables or
//! found there carry ordinal 0.
//!
//! Both kinds leave in arrival order once older than the window.
//!
//! The map is `griddle`'s incrementally resizing hash map: a shard holds
//! millions of keys, and a std `HashMap` rehashes them all in one insert
//! when it grows (measured: a 600 ms stall at 8M keys, 12 ms with griddle),
//! which would freeze every auction on the shard.

use std::collections::VecDeque;

use griddle::HashMap;

use gavel_protocol::{ResultPayload, Status};

use super::spilled_keys::SpilledKeys;

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
    /// Not in memory, but it may have left memory for the store: look it
    /// up there before executing.
    Lookup,
}

/// What the store said about a key that may have left memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookup {
    /// Accepted inside the window: replay it.
    Found(StoredOutcome),
    /// Not accepted inside the window: execute the request.
    Absent,
    /// The store could not be asked: refuse the request (not executed).
    Refused(gavel_protocol::ErrorCode),
}

/// An accepted key as the store holds it: its bid or order log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredOutcome {
    Bid {
        bidder_id: u64,
        amount: u64,
        at_ms: u64,
    },
    Order {
        buyer_id: u64,
        quantity: u64,
        sold_after: u64,
        held_after: u64,
        at_ms: u64,
    },
}

impl StoredOutcome {
    pub fn at_ms(&self) -> u64 {
        match *self {
            StoredOutcome::Bid { at_ms, .. } | StoredOutcome::Order { at_ms, .. } => at_ms,
        }
    }

    /// The request's fields and the RESULT first sent: for a bid, the
    /// amount and bidder; for an order, the units left after it (from the
    /// sale's `stock`) and the buyer's holding after it.
    pub fn entry(&self, stock: u64) -> ((u64, u64), ResultPayload) {
        match *self {
            StoredOutcome::Bid {
                bidder_id, amount, ..
            } => (
                (bidder_id, amount),
                ResultPayload::new(Status::Ok, amount, bidder_id),
            ),
            StoredOutcome::Order {
                buyer_id,
                quantity,
                sold_after,
                held_after,
                ..
            } => (
                (buyer_id, quantity),
                ResultPayload::new(Status::Ok, stock.saturating_sub(sold_after), held_after),
            ),
        }
    }
}

/// How many keys of each kind a store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBudget {
    pub accepted: usize,
    pub rejected: usize,
}

/// An accepted key in memory, in arrival order.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    at_ms: u64,
    /// This shard's keyed-mutation ordinal; 0 when the tables hold it already.
    ordinal: u64,
    key: Key,
}

/// Where accepted keys go when memory is full (durable stores only).
struct Spill {
    filter: SpilledKeys,
    /// Ordinals given out (keyed mutations emitted by this shard).
    emitted: u64,
    /// Of those, how many the tables hold (the materializer's count).
    applied: u64,
    /// A key the store was just asked about and does not hold: checked
    /// without the filter until it is remembered.
    absent: Option<Key>,
}

pub struct IdempotencyStore {
    map: HashMap<Key, Entry, ahash::RandomState>,
    /// Accepted keys in arrival order (never forgotten before the window ends).
    accepted: VecDeque<Accepted>,
    /// Rejected keys in arrival order (dropped oldest first at their cap).
    rejected: VecDeque<(u64, Key)>,
    window_ms: u64,
    budget: KeyBudget,
    spill: Option<Spill>,
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
            spill: None,
        }
    }

    /// Lets accepted keys leave memory for the store once the tables hold
    /// them (a durable store with the local engine).
    pub fn enable_spill(&mut self) {
        self.spill = Some(Spill {
            filter: SpilledKeys::new(self.window_ms),
            emitted: 0,
            applied: 0,
            absent: None,
        });
    }

    pub fn check(&mut self, key: Key, fields: (u64, u64)) -> Seen {
        if let Some(e) = self.map.get(&key) {
            return if e.fields == fields {
                Seen::Replay(e.outcome)
            } else {
                Seen::Conflict
            };
        }
        if let Some(sp) = &self.spill {
            if sp.absent != Some(key) && sp.filter.may_contain(key) {
                return Seen::Lookup;
            }
        }
        if self.accepted.len() >= self.budget.accepted
            && !self.spill_down_to(self.budget.accepted - 1)
        {
            return Seen::Full;
        }
        Seen::New
    }

    /// Moves the oldest accepted keys the tables hold out of memory until
    /// at most `len` are left; false if that many may not leave yet (or
    /// there is no store to leave for).
    fn spill_down_to(&mut self, len: usize) -> bool {
        let Some(sp) = &mut self.spill else {
            return false;
        };
        while self.accepted.len() > len {
            match self.accepted.front() {
                Some(a) if a.ordinal <= sp.applied => {
                    let a = self.accepted.pop_front().expect("just seen");
                    self.map.remove(&a.key);
                    sp.filter.insert(a.key, a.at_ms);
                }
                _ => return false,
            }
        }
        true
    }

    /// The materializer's count of this shard's keyed mutations in the
    /// tables: keys up to that ordinal may leave memory.
    pub fn keys_applied(&mut self, applied: u64) {
        if let Some(sp) = &mut self.spill {
            debug_assert!(
                applied <= sp.emitted,
                "applied {applied} > emitted {}",
                sp.emitted
            );
            debug_assert!(applied >= sp.applied, "the applied count only grows");
            sp.applied = applied;
        }
    }

    /// The store was asked about `key` and does not hold it: the next
    /// `check` of it skips the filter.
    pub fn looked_up_absent(&mut self, key: Key) {
        if let Some(sp) = &mut self.spill {
            sp.absent = Some(key);
        }
    }

    /// Remembers an accepted key the tables already hold (restored at start
    /// or found by a lookup). Past the budget the oldest such keys go back
    /// to the filter.
    pub fn remember_stored(&mut self, key: Key, fields: (u64, u64), ok: ResultPayload, at_ms: u64) {
        debug_assert_eq!(ok.status, Status::Ok, "the store holds accepted keys only");
        self.insert(key, fields, ok, at_ms, 0);
        self.spill_down_to(self.budget.accepted);
    }

    /// Remembers the first outcome of a request just executed. An accepted
    /// key is kept even past the budget; `check` then makes room or
    /// refuses new keys.
    pub fn remember(&mut self, key: Key, fields: (u64, u64), outcome: ResultPayload, at_ms: u64) {
        let mut ordinal = 0;
        if let Some(sp) = &mut self.spill {
            if outcome.status == Status::Ok {
                sp.emitted += 1;
                ordinal = sp.emitted;
            }
        }
        self.insert(key, fields, outcome, at_ms, ordinal);
    }

    fn insert(
        &mut self,
        key: Key,
        fields: (u64, u64),
        outcome: ResultPayload,
        at_ms: u64,
        ordinal: u64,
    ) {
        if let Some(sp) = &mut self.spill {
            if sp.absent == Some(key) {
                sp.absent = None;
            }
        }
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
        if accepted {
            self.accepted.push_back(Accepted {
                at_ms,
                ordinal,
                key,
            });
        } else {
            self.rejected.push_back((at_ms, key));
        }
    }

    /// Drops entries older than the window.
    pub fn expire(&mut self, now_ms: u64) {
        let live = |at: u64| at.saturating_add(self.window_ms) > now_ms;
        while let Some(a) = self.accepted.front() {
            if live(a.at_ms) {
                break;
            }
            self.map.remove(&a.key);
            self.accepted.pop_front();
        }
        while let Some(&(at, k)) = self.rejected.front() {
            if live(at) {
                break;
            }
            self.map.remove(&k);
            self.rejected.pop_front();
        }
        if let Some(sp) = &mut self.spill {
            sp.filter.expire(now_ms);
        }
    }

    /// Accepted keys that left memory for the store (inside the window).
    pub fn spilled_len(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.filter.len())
    }

    /// Memory the filter of spilled keys takes.
    pub fn filter_bytes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.filter.bytes())
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

    #[test]
    fn with_a_store_accepted_keys_leave_memory_once_the_tables_hold_them() {
        let mut s = IdempotencyStore::new(1000, budget(2, 2));
        s.enable_spill();
        s.remember(k(0), (0, 0), OK, 0);
        s.remember(k(1), (0, 0), OK, 1);
        assert_eq!(
            s.check(k(2), (0, 0)),
            Seen::Full,
            "nothing in the tables yet"
        );
        s.keys_applied(1);
        assert_eq!(s.check(k(2), (0, 0)), Seen::New, "key 0 left memory");
        assert_eq!(s.spilled_len(), 1);
        assert_eq!(
            s.check(k(0), (0, 0)),
            Seen::Lookup,
            "key 0 is asked of the store"
        );
        assert_eq!(
            s.check(k(1), (0, 0)),
            Seen::Replay(OK),
            "key 1 is still in memory"
        );
        s.remember(k(2), (0, 0), OK, 2);
        assert_eq!(
            s.check(k(3), (0, 0)),
            Seen::Full,
            "key 1 is in, key 2 is not applied"
        );
        s.keys_applied(3);
        assert_eq!(s.check(k(3), (0, 0)), Seen::New);
        // Found in the store: remembered again, and replayed from memory.
        s.remember_stored(k(0), (0, 0), OK, 0);
        assert_eq!(s.check(k(0), (0, 0)), Seen::Replay(OK));
        assert!(s.accepted_len() <= 2, "the budget holds after a lookup");
    }

    #[test]
    fn a_key_the_store_lacks_is_checked_without_the_filter_once() {
        let mut s = IdempotencyStore::new(1000, budget(1, 1));
        s.enable_spill();
        s.remember(k(0), (0, 0), OK, 0);
        s.keys_applied(1);
        assert_eq!(s.check(k(1), (0, 0)), Seen::New);
        s.remember(k(1), (0, 0), OK, 1);
        // Pretend key 5 collides in the filter: after an absent lookup it
        // is new, and once remembered the override is gone.
        s.looked_up_absent(k(5));
        assert!(matches!(s.check(k(5), (0, 0)), Seen::New | Seen::Full));
        s.remember(k(5), (0, 0), LOST, 2);
        assert_eq!(s.check(k(5), (0, 0)), Seen::Replay(LOST));
    }

    #[test]
    fn spilled_keys_expire_with_the_window() {
        let mut s = IdempotencyStore::new(800, budget(1, 1));
        s.enable_spill();
        s.remember(k(0), (0, 0), OK, 0);
        s.keys_applied(1);
        assert_eq!(s.check(k(1), (0, 0)), Seen::New);
        assert_eq!(s.check(k(0), (0, 0)), Seen::Lookup);
        s.expire(900);
        assert_eq!(s.spilled_len(), 0);
        assert_eq!(s.check(k(0), (0, 0)), Seen::New, "older than the window");
    }

    #[test]
    fn restored_keys_past_the_budget_go_to_the_filter() {
        let mut s = IdempotencyStore::new(1000, budget(10, 10));
        s.enable_spill();
        for i in 0..100 {
            s.remember_stored(k(i), (0, 0), OK, i);
        }
        assert_eq!(s.accepted_len(), 10);
        assert_eq!(s.spilled_len(), 90);
        for i in 0..90 {
            assert_eq!(s.check(k(i), (0, 0)), Seen::Lookup, "key {i}");
        }
        for i in 90..100 {
            assert_eq!(s.check(k(i), (0, 0)), Seen::Replay(OK));
        }
    }
}
