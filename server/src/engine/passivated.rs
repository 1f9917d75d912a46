//! Closed auctions that left memory (passivation, as actor systems do with
//! idle actors).
//!
//! With a durable store, a closed auction stays in memory for
//! `--passivate-after` (replays, GET_AUCTIONs of the result), then leaves
//! once its closing is in the tables; only its id stays, in a set. A later
//! command on it waits while the auction is read back from the tables (see
//! `engine::parked`), and it stays in memory for another period. Its
//! idempotency keys are not affected (they follow their own rule).

use std::collections::{HashSet, VecDeque};

/// The passivation state of one shard.
pub struct Passivation {
    after_ms: u64,
    /// Closed auctions in memory, by when they closed (or came back).
    closed: VecDeque<(u64, u64)>,
    /// Ids of auctions that left memory.
    ids: HashSet<u64, ahash::RandomState>,
}

impl Passivation {
    pub fn new(after_ms: u64) -> Self {
        Passivation {
            after_ms,
            closed: VecDeque::new(),
            ids: HashSet::default(),
        }
    }

    /// Auction `id` closed (or came back into memory) at `at_ms`.
    pub fn closed(&mut self, at_ms: u64, id: u64) {
        self.closed.push_back((at_ms, id));
    }

    /// The oldest closing whose auction may leave memory at `now_ms` (its
    /// time is up); the caller checks the tables hold it, then [`Self::pop`]s.
    pub fn next_due(&self, now_ms: u64) -> Option<(u64, u64)> {
        let &(at, id) = self.closed.front()?;
        (at.saturating_add(self.after_ms) <= now_ms).then_some((at, id))
    }

    pub fn pop(&mut self) {
        self.closed.pop_front();
    }

    /// Auction `id` left memory.
    pub fn left(&mut self, id: u64) {
        self.ids.insert(id);
    }

    /// Auction `id` came back (or never was in the tables).
    pub fn back(&mut self, id: u64) -> bool {
        self.ids.remove(&id)
    }

    #[inline]
    pub fn holds(&self, id: u64) -> bool {
        !self.ids.is_empty() && self.ids.contains(&id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closings_come_due_in_order_after_the_delay() {
        let mut p = Passivation::new(100);
        p.closed(10, 1);
        p.closed(20, 2);
        assert_eq!(p.next_due(109), None);
        assert_eq!(p.next_due(110), Some((10, 1)));
        p.pop();
        p.left(1);
        assert!(p.holds(1) && !p.holds(2));
        assert_eq!(p.next_due(120), Some((20, 2)));
        assert!(p.back(1));
        assert!(!p.back(1));
        assert!(p.is_empty());
    }
}
