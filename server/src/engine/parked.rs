//! Commands waiting for a lookup in the store: of an idempotency key that
//! left memory, or of an auction or sale that did (passivated: a closed
//! auction, a sold-out or ended sale).
//!
//! The command waits for the answer, and so does every later command on the
//! same auction or sale (so one connection's pipelined requests on it still
//! run in order, and nothing overtakes the request that waits). Commands on
//! other auctions keep flowing. The number waiting is capped per shard:
//! past it a command is refused BUSY (not executed).

use std::collections::{HashMap, HashSet, VecDeque};

use gavel_protocol::ErrorCode;

use super::auction::Auction;
use super::command::{Command, ConnRef, Op};
use super::idempotency::{Key, KeyKind, KeyLookup};
use super::sale::Sale;

/// What a shard asks the store for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// An idempotency key that may have left memory.
    Key(Key),
    /// A passivated auction, to bring back into memory.
    Auction(u64),
    /// A passivated sale (holdings included), to bring back into memory.
    Sale(u64),
}

impl Wanted {
    /// The auction or sale whose commands wait for it.
    pub fn scope(&self) -> Scope {
        match *self {
            Wanted::Key(k) => (k.kind, k.scope),
            Wanted::Auction(id) => (KeyKind::Bid, id),
            Wanted::Sale(id) => (KeyKind::Order, id),
        }
    }

    /// Brings passivated `scope` back into memory.
    pub fn passivated(scope: Scope) -> Self {
        match scope {
            (KeyKind::Bid, id) => Wanted::Auction(id),
            (KeyKind::Order, id) => Wanted::Sale(id),
        }
    }
}

/// The store's answer.
#[derive(Debug, Clone)]
pub enum Answer {
    Key(KeyLookup),
    /// The auction as the tables hold it (`None`: they do not).
    Auction(Option<Auction>),
    /// The sale and its holdings as the tables hold them (`None`: they do not).
    Sale(Option<Box<Sale>>),
    /// The store could not be asked: refuse the waiting command (not executed).
    Refused(ErrorCode),
}

/// An auction or a sale: what a lookup holds up.
pub type Scope = (KeyKind, u64);

/// The auction or sale a command acts on.
pub fn scope_of(op: &Op) -> Scope {
    match *op {
        Op::OpenAuction(o) => (KeyKind::Bid, o.auction_id),
        Op::Bid(b) => (KeyKind::Bid, b.auction_id),
        Op::CloseAuction(id) | Op::GetAuction(id) | Op::Subscribe(id) | Op::Unsubscribe(id) => {
            (KeyKind::Bid, id)
        }
        Op::OpenSale(o) => (KeyKind::Order, o.sku_id),
        Op::Buy(b) => (KeyKind::Order, b.sku_id),
        Op::GetSale(id) => (KeyKind::Order, id),
    }
}

/// Commands held, per scope, oldest first; the first of each waits for
/// its lookup.
pub struct Parked {
    by_scope: HashMap<Scope, VecDeque<Command>, ahash::RandomState>,
    len: usize,
    cap: usize,
    /// Connections that closed while commands waited: a SUBSCRIBE of theirs
    /// that runs later must not register (nobody would ever remove it).
    gone: HashSet<ConnRef, ahash::RandomState>,
}

impl Parked {
    pub fn new(cap: usize) -> Self {
        Parked {
            by_scope: HashMap::default(),
            len: 0,
            cap: cap.max(1),
            gone: HashSet::default(),
        }
    }

    /// A connection closed (its disconnect notice may overtake its own
    /// waiting commands).
    pub fn disconnected(&mut self, conn: ConnRef) {
        if self.len > 0 {
            self.gone.insert(conn);
        }
    }

    /// True when `conn` closed while commands waited.
    #[inline]
    pub fn is_gone(&self, conn: ConnRef) -> bool {
        !self.gone.is_empty() && self.gone.contains(&conn)
    }

    /// True when commands on `scope` wait (a later one must queue behind).
    #[inline]
    pub fn holds(&self, scope: Scope) -> bool {
        !self.by_scope.is_empty() && self.by_scope.contains_key(&scope)
    }

    /// Queues `cmd` on `scope` (first or behind others); false when the
    /// cap is reached and it must be refused instead.
    pub fn push(&mut self, scope: Scope, cmd: Command) -> bool {
        if self.len >= self.cap {
            return false;
        }
        self.by_scope.entry(scope).or_default().push_back(cmd);
        self.len += 1;
        true
    }

    /// Everything waiting on `scope`, oldest first (its lookup is answered).
    pub fn take(&mut self, scope: Scope) -> VecDeque<Command> {
        let q = self.by_scope.remove(&scope).unwrap_or_default();
        self.len -= q.len();
        q
    }

    /// After the commands taken have run: once nothing waits, no closed
    /// connection needs remembering.
    pub fn settle(&mut self) {
        if self.len == 0 && !self.gone.is_empty() {
            self.gone.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::command::ConnRef;

    fn get(id: u64) -> Command {
        Command {
            conn: ConnRef {
                io: 0,
                slot: 1,
                gen: 1,
            },
            request_id: id as u32,
            op: Op::GetAuction(id),
            t0_us: 0,
            kind: 0,
        }
    }

    #[test]
    fn holds_in_order_per_scope_and_caps() {
        let mut p = Parked::new(3);
        let a = (KeyKind::Bid, 1);
        assert!(!p.holds(a));
        assert!(p.push(a, get(1)));
        assert!(p.push(a, get(2)));
        assert!(p.holds(a));
        assert!(!p.holds((KeyKind::Order, 1)), "a sale is another scope");
        assert!(p.push((KeyKind::Bid, 2), get(3)));
        assert!(!p.push(a, get(4)), "capped");
        let q: Vec<u32> = p.take(a).iter().map(|c| c.request_id).collect();
        assert_eq!(q, vec![1, 2]);
        assert!(!p.holds(a));
        assert_eq!(p.len(), 1);
    }
}
