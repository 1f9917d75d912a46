//! Remembered outcomes of BID and BUY requests, keyed by their idempotency key.
//!
//! Keys are scoped to their auction or SKU. An entry keeps the request's
//! fields (to detect a conflicting reuse) and the RESULT first sent (to replay
//! it), in one 64-byte slot of a [`KeyTable`]. Two budgets, because the
//! contract treats the two kinds differently:
//!
//! - an *accepted* key (status OK) is never forgotten inside the window.
//!   With a durable store, when its budget is full accepted keys whose
//!   records the tables already hold *leave memory* for the store: they go
//!   into a filter ([`SpilledKeys`]), and a new key the filter may hold is
//!   answered `Seen::Lookup` — the caller looks it up in the store before
//!   executing. Without a store (nothing to spill to), or while no key may
//!   leave yet, a new keyed request is refused (`Seen::Full`, answered BUSY)
//!   rather than an old key forgotten;
//! - a *rejected* key may be dropped early (a retry of it is evaluated
//!   afresh, which can never apply it twice): past its own, smaller budget a
//!   rejected key leaves to make room (whichever the table's cursor reaches
//!   first, not necessarily the oldest).
//!
//! "The tables hold it" is counted, not guessed: every accepted key
//! remembered fresh is this shard's next keyed mutation (an *ordinal*), and
//! the materializer reports how many of this shard's keyed mutations it has
//! applied ([`IdempotencyStore::keys_applied`]); the writer keeps each
//! shard's mutations in order. The store keeps, per millisecond with keys
//! not yet applied, the last ordinal given in it: a key accepted before the
//! oldest such millisecond is in the tables. Times are clamped so they never
//! go back (a wall clock may). Keys restored from the tables or found there
//! are in them already.
//!
//! Expiry needs no per-key queue: the table's cursor walks the slots at a
//! pace that covers the table every 1/8 of the window, dropping keys older
//! than the window; until then an expired key is treated as absent.

use std::collections::VecDeque;

use gavel_protocol::{ResultPayload, Status};

use super::command::Op;
use super::key_table::{key_hash, KeyTable, Slot, Visit};
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

impl KeyKind {
    fn code(self) -> u8 {
        match self {
            KeyKind::Bid => 0,
            KeyKind::Order => 1,
        }
    }
}

impl Key {
    /// The key's hash, as the table and the filter use it.
    #[inline]
    pub fn hash(&self) -> u64 {
        key_hash(self.kind.code(), self.scope, self.key)
    }

    /// The key a slot holds.
    fn of(s: &Slot) -> Key {
        let kind = if s.kind == 0 {
            KeyKind::Bid
        } else {
            KeyKind::Order
        };
        Key {
            kind,
            scope: s.scope,
            key: s.key,
        }
    }

    #[inline]
    fn is(&self, s: &Slot) -> bool {
        s.key == self.key && s.scope == self.scope && s.kind == self.kind.code()
    }
}

/// The idempotency key a command is checked and remembered under (as the
/// engine's BID and BUY build it), if it has one.
#[inline]
pub fn key_of(op: &Op) -> Option<Key> {
    match *op {
        Op::Bid(b) => Some(Key {
            kind: KeyKind::Bid,
            scope: b.auction_id,
            key: b.bid_id,
        }),
        Op::Buy(b) => Some(Key {
            kind: KeyKind::Order,
            scope: b.sku_id,
            key: b.order_id,
        }),
        _ => None,
    }
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

/// Where accepted keys go when memory is full (durable stores only).
struct Spill {
    filter: SpilledKeys,
    /// Ordinals given out (keyed mutations emitted by this shard).
    emitted: u64,
    /// Of those, how many the tables hold (the materializer's count).
    applied: u64,
    /// Milliseconds with accepted keys not yet in the tables, oldest first,
    /// each with the last ordinal given in it.
    pending: VecDeque<(u64, u64)>,
    /// A key the store was just asked about and does not hold: checked
    /// without the filter until it is remembered.
    absent: Option<Key>,
    /// Walks for room found no key that may leave over a whole table's
    /// worth of slots at this `applied` count: no walk again until it grows.
    stuck_at: Option<u64>,
    /// Slots walked for room since a key last left.
    fruitless: usize,
    /// `--idempotency-max-filter-bytes` (this shard's share): past it no
    /// more keys leave memory (new keyed requests get BUSY at the cap).
    max_filter_bytes: usize,
}

impl Spill {
    /// True when an accepted key of `at_ms` is in the tables.
    #[inline]
    fn applied_at(&self, at_ms: u64) -> bool {
        self.pending.front().is_none_or(|&(t, _)| at_ms < t)
    }
}

/// Most accepted slots one walk for room reads (~0.3 ms at worst, each a
/// cache miss); slots it passes by their control byte alone cost little.
const ROOM_WALK: usize = 4096;

/// Counts of what a walk removed.
#[derive(Default)]
struct Removed {
    accepted: usize,
    rejected: usize,
}

pub struct IdempotencyStore {
    table: KeyTable,
    /// Accepted and rejected keys in the table (expired ones included
    /// until the walk removes them).
    accepted: usize,
    rejected: usize,
    window_ms: u64,
    budget: KeyBudget,
    /// The latest time a fresh outcome was remembered at (times never go back).
    latest_ms: u64,
    /// When the expiry walk last ran.
    walked_ms: u64,
    /// The coarse clock beside each slot: ms per tick (1/64 of the window).
    tick_ms: u64,
    spill: Option<Spill>,
}

impl IdempotencyStore {
    pub fn new(window_ms: u64, budget: KeyBudget) -> Self {
        IdempotencyStore {
            table: KeyTable::default(),
            accepted: 0,
            rejected: 0,
            window_ms,
            budget: KeyBudget {
                accepted: budget.accepted.max(1),
                rejected: budget.rejected.max(1),
            },
            latest_ms: 0,
            walked_ms: 0,
            tick_ms: (window_ms / 64).max(1),
            spill: None,
        }
    }

    /// Lets accepted keys leave memory for the store once its tables hold
    /// them (a durable store with the local engine).
    pub fn enable_spill(&mut self) {
        self.spill = Some(Spill {
            filter: SpilledKeys::new(self.window_ms),
            emitted: 0,
            applied: 0,
            pending: VecDeque::new(),
            absent: None,
            stuck_at: None,
            fruitless: 0,
            max_filter_bytes: usize::MAX,
        });
    }

    /// Bounds the filter of keys that left memory: once it holds this many
    /// bytes no more keys leave (the memory cap then answers BUSY, as
    /// without a store) until slices of it expire.
    pub fn cap_filter(&mut self, bytes: usize) {
        if let Some(sp) = &mut self.spill {
            sp.max_filter_bytes = bytes;
        }
    }

    #[inline]
    fn live(&self, at_ms: u64, now_ms: u64) -> bool {
        at_ms.saturating_add(self.window_ms) > now_ms
    }

    /// A time on the coarse clock kept beside each slot (wraps: only ages
    /// of up to 2^16 ticks = 1,024 windows are meaningful, and a key is
    /// walked out within 1 1/8 windows).
    #[inline]
    fn coarse(&self, at_ms: u64) -> u16 {
        (at_ms / self.tick_ms) as u16
    }

    /// Starts loading the table lines a `check` and `remember` of `key`
    /// will touch (see [`KeyTable::prefetch`]): call it a few commands
    /// ahead of that key's.
    #[inline]
    pub fn prefetch(&self, key: &Key) {
        self.table.prefetch(key.hash());
    }

    pub fn check(&mut self, key: Key, fields: (u64, u64), now_ms: u64) -> Seen {
        let h = key.hash();
        if let Some(p) = self.table.find(h, |s| key.is(s)) {
            let s = self.table.get(p);
            if self.live(s.at_ms, now_ms) {
                return if s.fields == fields {
                    Seen::Replay(outcome(s))
                } else {
                    Seen::Conflict
                };
            }
        }
        if let Some(sp) = &self.spill {
            // Full, and nothing may leave until the materializer moves: a
            // lookup would end in BUSY anyway (a replay waits for room too).
            if self.accepted >= self.budget.accepted && sp.stuck_at == Some(sp.applied) {
                return Seen::Full;
            }
            if sp.absent != Some(key) && sp.filter.may_contain(key) {
                return Seen::Lookup;
            }
        }
        if self.accepted >= self.budget.accepted
            && !self.spill_down_to(self.budget.accepted - 1, now_ms)
        {
            return Seen::Full;
        }
        Seen::New
    }

    /// Moves accepted keys the tables hold out of memory (and drops expired
    /// ones met on the way) until at most `len` accepted keys are left —
    /// in batches of 1/64 of the budget, so walks are rare. One call reads
    /// at most [`ROOM_WALK`] accepted slots (a request never waits for a
    /// walk of the whole table when few keys may leave; the next call goes
    /// on from there). False if that many may not leave yet (or there is no
    /// store to leave for).
    fn spill_down_to(&mut self, len: usize, now_ms: u64) -> bool {
        let Some(sp) = &mut self.spill else {
            return false;
        };
        if self.accepted <= len {
            return true;
        }
        if sp.stuck_at == Some(sp.applied) || sp.filter.bytes() >= sp.max_filter_bytes {
            return false;
        }
        let target = len.saturating_sub(self.budget.accepted / 64);
        let mut excess = self.accepted - target;
        let window = self.window_ms;
        let mut gone = Removed::default();
        let capacity = self.table.capacity();
        let mut read = 0;
        let passed = self.table.walk(capacity, |s, _, accepted| {
            if !accepted {
                return Visit::Keep;
            }
            read += 1;
            if read > ROOM_WALK {
                return Visit::Stop;
            }
            if s.at_ms.saturating_add(window) <= now_ms {
                gone.accepted += 1;
            } else if sp.applied_at(s.at_ms) {
                sp.filter.insert(Key::of(s), s.at_ms);
                gone.accepted += 1;
            } else {
                return Visit::Keep;
            }
            excess -= 1;
            if excess == 0 {
                Visit::RemoveAndStop
            } else {
                Visit::Remove
            }
        });
        self.accepted -= gone.accepted;
        if gone.accepted > 0 {
            sp.fruitless = 0;
        } else {
            sp.fruitless += passed;
            if sp.fruitless >= capacity {
                sp.stuck_at = Some(sp.applied);
                sp.fruitless = 0;
            }
        }
        self.accepted <= len
    }

    /// The materializer's count of this shard's keyed mutations in the
    /// tables: keys up to that ordinal may leave memory.
    pub fn keys_applied(&mut self, applied: u64) {
        let Some(sp) = &mut self.spill else {
            return;
        };
        debug_assert!(
            applied <= sp.emitted,
            "applied {applied} > emitted {}",
            sp.emitted
        );
        debug_assert!(applied >= sp.applied, "the applied count only grows");
        sp.applied = applied;
        while sp.pending.front().is_some_and(|&(_, last)| last <= applied) {
            sp.pending.pop_front();
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
    /// or found by a lookup). Past the budget, keys go back to the filter.
    pub fn remember_stored(&mut self, key: Key, fields: (u64, u64), ok: ResultPayload, at_ms: u64) {
        debug_assert_eq!(ok.status, Status::Ok, "the store holds accepted keys only");
        self.put(key, fields, ok, at_ms);
        let now_ms = self.latest_ms.max(at_ms);
        self.spill_down_to(self.budget.accepted, now_ms);
    }

    /// Remembers the first outcome of a request just executed. An accepted
    /// key is kept even past the budget; `check` then makes room or
    /// refuses new keys.
    pub fn remember(&mut self, key: Key, fields: (u64, u64), outcome: ResultPayload, at_ms: u64) {
        let at_ms = if outcome.status == Status::Ok {
            self.track(at_ms)
        } else {
            at_ms.max(self.latest_ms)
        };
        self.latest_ms = at_ms;
        if outcome.status != Status::Ok && self.rejected >= self.budget.rejected {
            self.drop_a_rejected_key();
        }
        self.put(key, fields, outcome, at_ms);
    }

    /// Counts one tracked mutation made at `at_ms` (every mutation: an
    /// accepted bid or purchase — remembered here —, an opening or an
    /// auction's closing): the shard's
    /// next ordinal. Returns the time it is counted at (never before an
    /// earlier one: a wall clock may go back).
    pub fn track(&mut self, at_ms: u64) -> u64 {
        let at_ms = at_ms.max(self.latest_ms);
        self.latest_ms = at_ms;
        if let Some(sp) = &mut self.spill {
            sp.emitted += 1;
            match sp.pending.back_mut() {
                Some((t, last)) if *t == at_ms => *last = sp.emitted,
                _ => sp.pending.push_back((at_ms, sp.emitted)),
            }
        }
        at_ms
    }

    /// The time the latest tracked mutation was counted at: everything
    /// tracked so far is in the tables once [`Self::in_tables_through`] it.
    pub fn latest_ms(&self) -> u64 {
        self.latest_ms
    }

    /// True when every tracked mutation made at or before `at_ms` (as
    /// `track` returned it) is in the tables. Always false without a store.
    pub fn in_tables_through(&self, at_ms: u64) -> bool {
        self.spill.as_ref().is_some_and(|sp| sp.applied_at(at_ms))
    }

    /// Makes room for a rejected key: the first one the cursor reaches
    /// leaves (the contract lets a rejected key be forgotten early).
    fn drop_a_rejected_key(&mut self) {
        let mut dropped = false;
        let capacity = self.table.capacity();
        self.table.walk(capacity, |_, _, accepted| {
            if accepted {
                return Visit::Keep;
            }
            dropped = true;
            Visit::RemoveAndStop
        });
        self.rejected -= dropped as usize;
    }

    /// Inserts or overwrites (an expired entry of the same key) one key.
    fn put(&mut self, key: Key, fields: (u64, u64), outcome: ResultPayload, at_ms: u64) {
        if let Some(sp) = &mut self.spill {
            if sp.absent == Some(key) {
                sp.absent = None;
            }
            sp.stuck_at = None;
        }
        let accepted = outcome.status == Status::Ok;
        let slot = Slot {
            scope: key.scope,
            key: key.key,
            fields,
            value: outcome.value,
            aux: outcome.aux,
            at_ms,
            status: outcome.status as u8,
            kind: key.kind.code(),
        };
        let (h, coarse) = (key.hash(), self.coarse(at_ms));
        match self.table.find(h, |s| key.is(s)) {
            Some(p) => {
                let old = self.table.get(p);
                debug_assert!(
                    old.at_ms + self.window_ms <= at_ms,
                    "a live key is remembered once: {key:?}"
                );
                self.forget_count(old.status == Status::Ok as u8);
                self.table.set(p, slot, h, accepted, coarse);
            }
            None => self.table.insert(slot, h, accepted, coarse),
        }
        if accepted {
            self.accepted += 1;
        } else {
            self.rejected += 1;
        }
    }

    fn forget_count(&mut self, accepted: bool) {
        if accepted {
            self.accepted -= 1;
        } else {
            self.rejected -= 1;
        }
    }

    /// Drops keys older than the window: walks the part of the table due
    /// since the last call (the whole table every 1/8 of the window).
    pub fn expire(&mut self, now_ms: u64) {
        let pass_ms = (self.window_ms / 8).max(1);
        let elapsed = now_ms.saturating_sub(self.walked_ms);
        self.walked_ms = now_ms;
        let capacity = self.table.capacity();
        let due = (capacity as u128 * u128::from(elapsed) / u128::from(pass_ms)) as usize;
        self.expire_walk(now_ms, due.saturating_add(256).min(capacity));
        if let Some(sp) = &mut self.spill {
            sp.filter.expire(now_ms);
        }
    }

    fn expire_walk(&mut self, now_ms: u64, quota: usize) {
        let window = self.window_ms;
        let now = self.coarse(now_ms);
        // Ages (in ticks) that decide without reading the slot: the window
        // is 64 ticks (rounded down), an age within a tick of it is checked
        // exactly.
        let (young, old) = (
            (window / self.tick_ms).saturating_sub(1),
            window / self.tick_ms + 1,
        );
        let mut gone = Removed::default();
        self.table.walk(quota, |s, coarse, accepted| {
            let age = now.wrapping_sub(coarse);
            // Stamped after now: the wall clock stepped back (a key is
            // remembered at the latest time seen). Ages this large are not
            // otherwise reached: every slot is walked each 1/8 window.
            let future = age > u16::MAX / 2;
            let age = u64::from(age);
            if future || age < young || (age <= old && s.at_ms.saturating_add(window) > now_ms) {
                return Visit::Keep;
            }
            if accepted {
                gone.accepted += 1;
            } else {
                gone.rejected += 1;
            }
            Visit::Remove
        });
        self.accepted -= gone.accepted;
        self.rejected -= gone.rejected;
    }

    /// Keys in the table (accepted and rejected, expired ones not yet walked).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn accepted_len(&self) -> usize {
        self.accepted
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Accepted keys that left memory for the store (inside the window).
    pub fn spilled_len(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.filter.len())
    }

    /// Memory the filter of spilled keys takes.
    pub fn filter_bytes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.filter.bytes())
    }
}

/// The RESULT a slot remembers.
#[inline]
fn outcome(s: &Slot) -> ResultPayload {
    let status = Status::from_u8(s.status).expect("a stored status is valid");
    ResultPayload::new(status, s.value, s.aux)
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
    fn key_of_gives_the_keys_bid_and_buy_remember() {
        use gavel_protocol::{BidRequest, BuyRequest};
        let bid = Op::Bid(BidRequest {
            auction_id: 3,
            bidder_id: 4,
            amount: 5,
            bid_id: 6,
        });
        let buy = Op::Buy(BuyRequest {
            sku_id: 3,
            buyer_id: 4,
            quantity: 5,
            order_id: 6,
        });
        let want = |kind| Key {
            kind,
            scope: 3,
            key: 6,
        };
        assert_eq!(key_of(&bid), Some(want(KeyKind::Bid)));
        assert_eq!(key_of(&buy), Some(want(KeyKind::Order)));
        assert_eq!(key_of(&Op::GetSale(3)), None);
    }

    #[test]
    fn replay_conflict_and_scope() {
        let mut s = IdempotencyStore::new(1000, budget(10, 10));
        assert_eq!(s.check(k(1), (6, 5), 0), Seen::New);
        s.remember(k(1), (6, 5), OK, 0);
        assert_eq!(s.check(k(1), (6, 5), 0), Seen::Replay(OK));
        assert_eq!(s.check(k(1), (6, 7), 0), Seen::Conflict);
        let other_scope = Key { scope: 2, ..k(1) };
        assert_eq!(s.check(other_scope, (6, 5), 0), Seen::New);
        let other_kind = Key {
            kind: KeyKind::Order,
            ..k(1)
        };
        assert_eq!(s.check(other_kind, (6, 5), 0), Seen::New);
    }

    #[test]
    fn accepted_keys_are_never_evicted_before_the_window_ends() {
        let mut s = IdempotencyStore::new(100, budget(3, 2));
        for i in 0..3 {
            s.remember(k(i), (0, 0), OK, i * 10);
        }
        assert_eq!(s.check(k(3), (0, 0), 0), Seen::Full, "no room: refuse");
        for i in 0..3 {
            assert_eq!(s.check(k(i), (0, 0), 0), Seen::Replay(OK), "still replays");
        }
        s.expire(105);
        assert_eq!(s.accepted_len(), 2, "the key at 0 expired at 100");
        assert_eq!(s.check(k(3), (0, 0), 105), Seen::New);
        s.expire(1000);
        assert!(s.is_empty());
    }

    #[test]
    fn rejected_keys_have_their_own_budget() {
        let mut s = IdempotencyStore::new(100, budget(2, 2));
        s.remember(k(0), (0, 0), OK, 0);
        for i in 1..=5 {
            s.remember(k(i), (0, 0), LOST, i);
        }
        assert_eq!(s.len(), 3, "one accepted, two rejected");
        assert_eq!(s.check(k(0), (0, 0), 0), Seen::Replay(OK));
        let kept = (1..=5)
            .filter(|&i| s.check(k(i), (0, 0), 0) == Seen::Replay(LOST))
            .count();
        assert_eq!(kept, 2, "the others are evaluated afresh");
        // A flood of rejected outcomes never pushes an accepted key out.
        for i in 10..1000 {
            s.remember(k(i), (0, 0), LOST, 50);
        }
        assert_eq!(s.check(k(0), (0, 0), 0), Seen::Replay(OK));
    }

    #[test]
    fn an_expired_key_is_new_and_is_remembered_afresh() {
        let mut s = IdempotencyStore::new(100, budget(4, 4));
        s.remember(k(1), (1, 1), OK, 0);
        assert_eq!(s.check(k(1), (2, 2), 99), Seen::Conflict);
        assert_eq!(
            s.check(k(1), (2, 2), 100),
            Seen::New,
            "not walked yet, but expired"
        );
        s.remember(k(1), (2, 2), LOST, 100);
        assert_eq!(s.check(k(1), (2, 2), 150), Seen::Replay(LOST));
        assert_eq!((s.len(), s.accepted_len()), (1, 0));
    }

    /// The wall clock stepping back (by more than a coarse tick) does not
    /// make the walk take keys remembered at a later time for expired.
    #[test]
    fn a_clock_stepping_back_expires_nothing() {
        let mut s = IdempotencyStore::new(6_400, budget(4, 4));
        s.remember(k(1), (1, 1), OK, 10_000);
        s.expire(9_000); // ten ticks back
        assert_eq!(s.len(), 1);
        assert_eq!(s.check(k(1), (1, 1), 9_000), Seen::Replay(OK));
        s.expire(16_399);
        assert_eq!(s.len(), 1, "live until 10,000 + the window");
        s.expire(16_400 + 6_400);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn with_a_store_accepted_keys_leave_memory_once_the_tables_hold_them() {
        let mut s = IdempotencyStore::new(1000, budget(2, 2));
        s.enable_spill();
        s.remember(k(0), (0, 0), OK, 0);
        s.remember(k(1), (0, 0), OK, 1);
        assert_eq!(
            s.check(k(2), (0, 0), 0),
            Seen::Full,
            "nothing in the tables yet"
        );
        s.keys_applied(1);
        assert_eq!(s.check(k(2), (0, 0), 0), Seen::New, "key 0 left memory");
        assert_eq!(s.spilled_len(), 1);
        assert_eq!(
            s.check(k(0), (0, 0), 0),
            Seen::Lookup,
            "key 0 is asked of the store"
        );
        assert_eq!(
            s.check(k(1), (0, 0), 0),
            Seen::Replay(OK),
            "key 1 is still in memory"
        );
        s.remember(k(2), (0, 0), OK, 2);
        assert_eq!(
            s.check(k(3), (0, 0), 0),
            Seen::Full,
            "key 1 is in, key 2 is not applied"
        );
        s.keys_applied(3);
        assert_eq!(s.check(k(3), (0, 0), 0), Seen::New);
        // Found in the store: remembered again, and replayed from memory.
        s.remember_stored(k(0), (0, 0), OK, 0);
        assert_eq!(s.check(k(0), (0, 0), 0), Seen::Replay(OK));
        assert!(s.accepted_len() <= 2, "the budget holds after a lookup");
    }

    #[test]
    fn a_key_the_store_lacks_is_checked_without_the_filter_once() {
        let mut s = IdempotencyStore::new(1000, budget(1, 1));
        s.enable_spill();
        s.remember(k(0), (0, 0), OK, 0);
        s.keys_applied(1);
        assert_eq!(s.check(k(1), (0, 0), 0), Seen::New);
        s.remember(k(1), (0, 0), OK, 1);
        // Pretend key 5 collides in the filter: after an absent lookup it
        // is new, and once remembered the override is gone.
        s.looked_up_absent(k(5));
        assert!(matches!(s.check(k(5), (0, 0), 0), Seen::New | Seen::Full));
        s.remember(k(5), (0, 0), LOST, 2);
        assert_eq!(s.check(k(5), (0, 0), 0), Seen::Replay(LOST));
    }

    #[test]
    fn spilled_keys_expire_with_the_window() {
        let mut s = IdempotencyStore::new(800, budget(1, 1));
        s.enable_spill();
        s.remember(k(0), (0, 0), OK, 0);
        s.keys_applied(1);
        assert_eq!(s.check(k(1), (0, 0), 0), Seen::New);
        assert_eq!(s.check(k(0), (0, 0), 0), Seen::Lookup);
        s.expire(900);
        assert_eq!(s.spilled_len(), 0);
        assert_eq!(
            s.check(k(0), (0, 0), 900),
            Seen::New,
            "older than the window"
        );
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
        let (mut lookups, mut replays) = (0, 0);
        for i in 0..100 {
            match s.check(k(i), (0, 0), 0) {
                Seen::Lookup => lookups += 1,
                Seen::Replay(OK) => replays += 1,
                other => panic!("key {i}: {other:?}"),
            }
        }
        assert_eq!((lookups, replays), (90, 10));
    }

    /// A full table of keys the tables do not hold yet: each check reads a
    /// bounded number of slots and answers Full; once a whole table's worth
    /// found nothing it stops walking until the applied count grows; then
    /// room is made again.
    #[test]
    fn room_is_looked_for_in_bounded_steps_and_after_progress() {
        let n = 3 * ROOM_WALK as u64;
        let mut s = IdempotencyStore::new(1_000_000, budget(n as usize, 10));
        s.enable_spill();
        for i in 0..n {
            s.remember(k(i), (0, 0), OK, i);
        }
        for _ in 0..10 {
            assert_eq!(s.check(k(n), (0, 0), n), Seen::Full);
        }
        assert_eq!(
            s.spill.as_ref().unwrap().stuck_at,
            Some(0),
            "gave up until progress"
        );
        s.keys_applied(n);
        assert_eq!(s.check(k(n), (0, 0), n), Seen::New);
        assert!(s.accepted_len() < n as usize);
    }

    /// The filter has a budget too: once full, no more keys leave memory
    /// and new keys get Full (BUSY) — never forgotten.
    #[test]
    fn a_full_filter_stops_keys_leaving_memory() {
        let mut s = IdempotencyStore::new(1_000_000, budget(1, 1));
        s.enable_spill();
        s.cap_filter(1);
        s.remember(k(0), (0, 0), OK, 0);
        s.keys_applied(1);
        assert_eq!(s.check(k(1), (0, 0), 0), Seen::New, "the first key leaves");
        s.remember(k(1), (0, 0), OK, 1);
        s.keys_applied(2);
        assert_eq!(
            s.check(k(2), (0, 0), 1),
            Seen::Full,
            "the filter is at its budget"
        );
        assert_eq!(s.check(k(1), (0, 0), 1), Seen::Replay(OK));
        assert_eq!(
            s.check(k(0), (0, 0), 1),
            Seen::Lookup,
            "the first is still asked of the store"
        );
    }
}
