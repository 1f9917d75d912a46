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

use std::collections::{HashSet, VecDeque};

use super::idempotency::KeyKind;
use super::parked::Scope;

/// The passivation state of one shard.
pub struct Passivation {
    after_ms: u64,
    auctions: Leaving,
    sales: Leaving,
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

    /// `scope` came back (or never was in the tables).
    pub fn back(&mut self, (kind, id): Scope) -> bool {
        self.of_mut(kind).ids.remove(&id)
    }

    #[inline]
    pub fn holds(&self, (kind, id): Scope) -> bool {
        let ids = &self.of(kind).ids;
        !ids.is_empty() && ids.contains(&id)
    }

    /// Auctions out of memory.
    pub fn auctions(&self) -> usize {
        self.auctions.ids.len()
    }

    /// Sales out of memory.
    pub fn sales(&self) -> usize {
        self.sales.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.auctions.ids.is_empty() && self.sales.ids.is_empty()
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
}
