//! Who watches which auction on this shard, both ways round: subscribers per
//! auction (for fan-out) and auctions per connection (to clean up when a
//! connection goes). Used by the local engine and the Redis engine alike.

use std::collections::HashMap;

use super::command::ConnRef;

#[derive(Default)]
pub struct Subscriptions {
    by_auction: HashMap<u64, Vec<ConnRef>, ahash::RandomState>,
    by_conn: HashMap<ConnRef, Vec<u64>, ahash::RandomState>,
    /// Subscriptions held (pairs of connection and auction).
    total: usize,
}

impl Subscriptions {
    /// Adds `conn` to `auction`'s subscribers; false if it already was one.
    pub fn add(&mut self, auction: u64, conn: ConnRef) -> bool {
        let subs = self.by_auction.entry(auction).or_default();
        if subs.contains(&conn) {
            return false;
        }
        subs.push(conn);
        self.by_conn.entry(conn).or_default().push(auction);
        self.total += 1;
        true
    }

    /// Subscriptions held (pairs of connection and auction).
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn remove(&mut self, auction: u64, conn: ConnRef) {
        if let Some(v) = self.by_auction.get_mut(&auction) {
            v.retain(|s| *s != conn);
            if v.is_empty() {
                self.by_auction.remove(&auction);
            }
        }
        self.forget_on_conn(conn, auction);
    }

    /// The subscribers of `auction`.
    pub fn of(&self, auction: u64) -> &[ConnRef] {
        self.by_auction.get(&auction).map_or(&[], Vec::as_slice)
    }

    pub fn is_watched(&self, auction: u64) -> bool {
        !self.of(auction).is_empty()
    }

    /// Removes and returns every subscriber of `auction` (it closed).
    pub fn take(&mut self, auction: u64) -> Vec<ConnRef> {
        let subs = self.by_auction.remove(&auction).unwrap_or_default();
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
            if let Some(v) = self.by_auction.get_mut(&id) {
                v.retain(|s| *s != conn);
                if v.is_empty() {
                    self.by_auction.remove(&id);
                }
            }
        }
    }

    fn forget_on_conn(&mut self, conn: ConnRef, auction: u64) {
        if let Some(v) = self.by_conn.get_mut(&conn) {
            let before = v.len();
            v.retain(|x| *x != auction);
            self.total -= before - v.len();
            if v.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
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

    #[test]
    fn both_directions_stay_in_step() {
        let mut s = Subscriptions::default();
        assert!(s.add(7, A));
        assert!(!s.add(7, A), "no duplicate");
        assert!(s.add(7, B));
        assert!(s.add(8, A));
        assert_eq!(s.of(7), &[A, B]);
        s.remove(7, B);
        assert_eq!(s.of(7), &[A]);
        assert_eq!(s.take(7), vec![A]);
        assert!(!s.is_watched(7));
        s.disconnect(A);
        assert!(!s.is_watched(8));
        assert!(
            s.by_conn.is_empty() && s.by_auction.is_empty(),
            "nothing left behind"
        );
    }
}
