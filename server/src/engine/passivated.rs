//! Closed auctions and finished sales that left memory (passivation, as
//! actor systems do with idle actors).
//!
//! With a durable store, a closed auction — or a sale that sold out or
//! ended — stays in memory for `--passivate-after` (replays, reads of the
//! result, the herd that arrives after a sell-out), then leaves once all it
//! did is in the tables; only its id stays, in a set. A later command on it
//! waits while it is read back from the tables (see `engine::parked`), and
//! it stays in memory for another period. Its idempotency keys are not
//! affected (they follow their own rule). Nothing brings a finished auction
//! or sale back to life, so what was true when it left stays true.
//!
//! An *open* auction leaves too once no command has named it for
//! `--passivate-after`, nobody subscribes to it and its last change is in
//! the tables (found by a walk over the auctions, see `engine::state`).
//! It keeps its id here and its entry in the deadline heap: if its end
//! comes while it is out, its closing is recorded without reading it back
//! (nobody watches it, and closing changes nothing else), and it counts as
//! closed from then on.

use std::collections::{HashSet, VecDeque};

use super::idempotency::KeyKind;
use super::parked::Scope;

/// The passivation state of one shard.
pub struct Passivation {
    after_ms: u64,
    auctions: Leaving,
    sales: Leaving,
    /// Open auctions that left memory (idle), apart from the closed ones.
    idle: HashSet<u64, ahash::RandomState>,
}

/// One kind's queue of finished ones in memory and set of those that left.
#[derive(Default)]
struct Leaving {
    /// Finished (or came back), by when, oldest first.
    finished: VecDeque<(u64, u64)>,
    /// Ids that left memory.
    ids: HashSet<u64, ahash::RandomState>,
}

impl Passivation {
    pub fn new(after_ms: u64) -> Self {
        Passivation {
            after_ms,
            auctions: Leaving::default(),
            sales: Leaving::default(),
            idle: HashSet::default(),
        }
    }

    fn of(&self, kind: KeyKind) -> &Leaving {
        match kind {
            KeyKind::Bid => &self.auctions,
            KeyKind::Order => &self.sales,
        }
    }

    fn of_mut(&mut self, kind: KeyKind) -> &mut Leaving {
        match kind {
            KeyKind::Bid => &mut self.auctions,
            KeyKind::Order => &mut self.sales,
        }
    }

    /// The auction or sale `(kind, id)` finished (or came back into memory)
    /// at `at_ms`: everything it did was tracked at or before `at_ms`.
    pub fn finished(&mut self, (kind, id): Scope, at_ms: u64) {
        self.of_mut(kind).finished.push_back((at_ms, id));
    }

    /// The oldest finished one of `kind` that may leave memory at `now_ms`
    /// (its time is up); the caller checks the tables hold it, then
    /// [`Self::pop`]s.
    pub fn next_due(&self, kind: KeyKind, now_ms: u64) -> Option<(u64, u64)> {
        let &(at, id) = self.of(kind).finished.front()?;
        (at.saturating_add(self.after_ms) <= now_ms).then_some((at, id))
    }

    pub fn pop(&mut self, kind: KeyKind) {
        self.of_mut(kind).finished.pop_front();
    }

    /// `scope` left memory.
    pub fn left(&mut self, (kind, id): Scope) {
        self.of_mut(kind).ids.insert(id);
    }

    /// Open auction `id` left memory, idle.
    pub fn left_idle(&mut self, id: u64) {
        self.idle.insert(id);
    }

    /// The end of auction `id` came: true when it is an idle open auction
    /// out of memory (its closing is for the caller to record); from now
    /// on it counts as a closed one.
    pub fn ended_while_out(&mut self, id: u64) -> bool {
        let was = !self.idle.is_empty() && self.idle.remove(&id);
        if was {
            self.auctions.ids.insert(id);
        }
        was
    }

    /// `scope` came back (or never was in the tables).
    pub fn back(&mut self, (kind, id): Scope) -> bool {
        let idle = kind == KeyKind::Bid && !self.idle.is_empty() && self.idle.remove(&id);
        idle || self.of_mut(kind).ids.remove(&id)
    }

    #[inline]
    pub fn holds(&self, (kind, id): Scope) -> bool {
        let ids = &self.of(kind).ids;
        let idle = kind == KeyKind::Bid && !self.idle.is_empty() && self.idle.contains(&id);
        idle || (!ids.is_empty() && ids.contains(&id))
    }

    /// Auctions out of memory, open and closed.
    pub fn auctions(&self) -> usize {
        self.auctions.ids.len() + self.idle.len()
    }

    /// Sales out of memory.
    pub fn sales(&self) -> usize {
        self.sales.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.auctions.ids.is_empty() && self.sales.ids.is_empty() && self.idle.is_empty()
    }

    /// How long an open auction stays in memory after a command named it.
    pub fn after_ms(&self) -> u64 {
        self.after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A1: Scope = (KeyKind::Bid, 1);
    const A2: Scope = (KeyKind::Bid, 2);
    const S1: Scope = (KeyKind::Order, 1);

    #[test]
    fn finished_ones_come_due_in_order_after_the_delay_per_kind() {
        let mut p = Passivation::new(100);
        p.finished(A1, 10);
        p.finished(A2, 20);
        p.finished(S1, 5);
        assert_eq!(p.next_due(KeyKind::Bid, 109), None);
        assert_eq!(p.next_due(KeyKind::Order, 105), Some((5, 1)));
        assert_eq!(p.next_due(KeyKind::Bid, 110), Some((10, 1)));
        p.pop(KeyKind::Bid);
        p.left(A1);
        assert!(p.holds(A1) && !p.holds(A2) && !p.holds(S1));
        assert_eq!((p.auctions(), p.sales()), (1, 0));
        assert_eq!(p.next_due(KeyKind::Bid, 120), Some((20, 2)));
        p.left(S1);
        assert!(p.holds(S1) && p.back(S1) && !p.back(S1));
        assert!(p.back(A1));
        assert!(!p.back(A1));
        assert!(p.is_empty());
    }

    #[test]
    fn an_idle_open_auction_that_ends_while_out_counts_as_closed() {
        let mut p = Passivation::new(100);
        p.left_idle(1);
        p.left_idle(2);
        assert!(p.holds(A1) && p.holds(A2) && p.auctions() == 2);
        assert!(!p.ended_while_out(3), "not out");
        assert!(p.ended_while_out(1));
        assert!(!p.ended_while_out(1), "recorded once");
        assert!(p.holds(A1) && p.auctions() == 2);
        assert!(p.back(A2) && !p.holds(A2));
        assert!(p.back(A1) && p.is_empty());
    }
}
