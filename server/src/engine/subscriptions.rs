//! Who watches which auction on this shard, both ways round: subscribers per
//! auction (for fan-out) and auctions per connection (to clean up when a
//! connection goes). Used by the local engine and the Redis engine alike.
//!
//! Both directions are hash sets, so subscribing, unsubscribing and a
//! disconnect cost O(1) per pair however many watch one auction. The shard's
//! total is capped (its share of `--max-subscriptions`); each connection's
//! count is capped by the event loop (`--max-subscriptions-per-conn`), which
//! learns of every change from the replies ([`Added`], pushes).

use std::collections::{HashMap, HashSet};

use super::command::ConnRef;

type Set<T> = HashSet<T, ahash::RandomState>;

/// What [`Subscriptions::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new subscription.
    New,
    /// The connection already watched the auction: nothing changed.
    Already,
    /// The shard holds its cap of subscriptions: nothing changed.
    Full,
}

pub struct Subscriptions {
    by_auction: HashMap<u64, Set<ConnRef>, ahash::RandomState>,
    by_conn: HashMap<ConnRef, Set<u64>, ahash::RandomState>,
    /// Subscriptions held (pairs of connection and auction).
    total: usize,
    /// Most subscriptions this shard holds.
    cap: usize,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::with_cap(usize::MAX)
    }
}

impl Subscriptions {
    pub fn with_cap(cap: usize) -> Self {
        Subscriptions {
            by_auction: HashMap::default(),
            by_conn: HashMap::default(),
            total: 0,
            cap,
        }
    }

    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Adds `conn` to `auction`'s subscribers, unless it already is one or
    /// the shard is at its cap.
    pub fn add(&mut self, auction: u64, conn: ConnRef) -> Added {
        if self.of_conn_contains(conn, auction) {
            return Added::Already;
        }
        if self.total >= self.cap {
            return Added::Full;
        }
        self.by_auction.entry(auction).or_default().insert(conn);
        self.by_conn.entry(conn).or_default().insert(auction);
        self.total += 1;
        Added::New
    }

    fn of_conn_contains(&self, conn: ConnRef, auction: u64) -> bool {
        self.by_conn
            .get(&conn)
            .is_some_and(|s| s.contains(&auction))
    }

    /// Subscriptions held (pairs of connection and auction).
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Removes one subscription; true if there was one.
    pub fn remove(&mut self, auction: u64, conn: ConnRef) -> bool {
        if !self.forget_on_conn(conn, auction) {
            return false;
        }
        self.forget_on_auction(auction, conn);
        true
    }

    /// The subscribers of `auction`.
    pub fn of(&self, auction: u64) -> impl Iterator<Item = &ConnRef> {
        self.by_auction.get(&auction).into_iter().flatten()
    }

    pub fn is_watched(&self, auction: u64) -> bool {
        self.by_auction.contains_key(&auction)
    }

    /// Removes and returns every subscriber of `auction` (it closed).
    pub fn take(&mut self, auction: u64) -> Vec<ConnRef> {
        let subs: Vec<ConnRef> = self
            .by_auction
            .remove(&auction)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for s in &subs {
            self.forget_on_conn(*s, auction);
        }
        subs
    }

    /// A connection went away: forget all it watched.
    pub fn disconnect(&mut self, conn: ConnRef) {
        let ids = self.by_conn.remove(&conn).unwrap_or_default();
        self.total -= ids.len();
        for id in ids {
            self.forget_on_auction(id, conn);
        }
    }

    fn forget_on_auction(&mut self, auction: u64, conn: ConnRef) {
        if let Some(v) = self.by_auction.get_mut(&auction) {
            v.remove(&conn);
            if v.is_empty() {
                self.by_auction.remove(&auction);
            }
        }
    }

    fn forget_on_conn(&mut self, conn: ConnRef, auction: u64) -> bool {
        let Some(v) = self.by_conn.get_mut(&conn) else {
            return false;
        };
        let removed = v.remove(&auction);
        if v.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.total -= removed as usize;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnRef = ConnRef {
        io: 0,
        slot: 1,
        gen: 1,
    };
    const B: ConnRef = ConnRef {
        io: 1,
        slot: 1,
        gen: 2,
    };

    fn of(s: &Subscriptions, auction: u64) -> Vec<ConnRef> {
        let mut v: Vec<ConnRef> = s.of(auction).copied().collect();
        v.sort_by_key(|c| (c.io, c.slot, c.gen));
        v
    }

    #[test]
    fn both_directions_stay_in_step() {
        let mut s = Subscriptions::default();
        assert_eq!(s.add(7, A), Added::New);
        assert_eq!(s.add(7, A), Added::Already, "no duplicate");
        assert_eq!(s.add(7, B), Added::New);
        assert_eq!(s.add(8, A), Added::New);
        assert_eq!(s.len(), 3);
        assert_eq!(of(&s, 7), vec![A, B]);
        assert!(s.remove(7, B));
        assert!(!s.remove(7, B), "removed once");
        assert_eq!(of(&s, 7), vec![A]);
        assert_eq!(s.take(7), vec![A]);
        assert!(!s.is_watched(7));
        s.disconnect(A);
        assert!(!s.is_watched(8));
        assert!(
            s.by_conn.is_empty() && s.by_auction.is_empty() && s.is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn the_cap_holds_and_frees_up() {
        let mut s = Subscriptions::with_cap(2);
        assert_eq!(s.add(1, A), Added::New);
        assert_eq!(s.add(2, A), Added::New);
        assert_eq!(s.add(1, A), Added::Already, "a duplicate is not refused");
        assert_eq!(s.add(3, B), Added::Full);
        assert_eq!(s.len(), 2);
        s.disconnect(A);
        assert_eq!(s.add(3, B), Added::New);
    }

    #[test]
    fn many_subscribers_of_one_auction_cost_no_scan() {
        // 200,000 subscribers, then each leaves: quadratic scans would take
        // minutes here.
        let mut s = Subscriptions::default();
        let conn = |i: u32| ConnRef {
            io: 0,
            slot: i,
            gen: 1,
        };
        for i in 0..200_000 {
            assert_eq!(s.add(1, conn(i)), Added::New);
        }
        assert_eq!(s.of(1).count(), 200_000);
        for i in 0..200_000 {
            s.disconnect(conn(i));
        }
        assert!(s.is_empty() && !s.is_watched(1));
    }
}
