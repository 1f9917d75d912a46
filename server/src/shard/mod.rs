//! Shards: one thread owns each shard's state, so the hot path takes no locks.
//!
//! The [`runner`] drains a shard's queue in batches and releases each round's
//! replies (through the store writer when they must wait for a commit). It is
//! generic over a [`Backend`] — the local engine ([`local`]) or the Redis
//! engine (`cluster`) — and never asks which one it runs.

pub mod local;
pub mod runner;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use gavel_protocol::Push;

use crate::engine::command::{Command, ConnRef};
use crate::engine::effects::Effects;
pub use crate::engine::limits::Sizes;

/// What a shard's queue carries.
#[derive(Debug)]
pub enum ShardMsg {
    /// The commands one event loop decoded for this shard in one turn.
    Batch(Vec<Command>),
    /// A connection closed: forget its subscriptions.
    Disconnect(ConnRef),
    /// Cross-node mode: updates published by some node, for this shard's
    /// local subscribers.
    Remote(Vec<Push>),
}

/// The event loops' side of a shard.
pub struct ShardHandle {
    pub tx: Sender<ShardMsg>,
    /// Commands sent and not yet executed; bounds the queue.
    pub queued: Arc<AtomicUsize>,
    /// What the shard holds, as of its last round (for the gauges).
    pub sizes: Arc<SizeGauges>,
}

/// A shard's [`Sizes`], published once per round, read when scraped.
#[derive(Debug, Default)]
pub struct SizeGauges {
    auctions: AtomicUsize,
    sales: AtomicUsize,
    subscriptions: AtomicUsize,
    keys: AtomicUsize,
    spilled_keys: AtomicUsize,
    filter_bytes: AtomicUsize,
    parked: AtomicUsize,
    passivated: AtomicUsize,
    passivated_sales: AtomicUsize,
    holdings: AtomicUsize,
}

impl SizeGauges {
    pub fn store(&self, s: Sizes) {
        let set = |a: &AtomicUsize, v| a.store(v, Ordering::Relaxed);
        set(&self.auctions, s.auctions);
        set(&self.sales, s.sales);
        set(&self.subscriptions, s.subscriptions);
        set(&self.keys, s.keys);
        set(&self.spilled_keys, s.spilled_keys);
        set(&self.filter_bytes, s.filter_bytes);
        set(&self.parked, s.parked);
        set(&self.passivated, s.passivated);
        set(&self.passivated_sales, s.passivated_sales);
        set(&self.holdings, s.holdings);
    }

    pub fn load(&self) -> Sizes {
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        Sizes {
            auctions: get(&self.auctions),
            sales: get(&self.sales),
            subscriptions: get(&self.subscriptions),
            keys: get(&self.keys),
            spilled_keys: get(&self.spilled_keys),
            filter_bytes: get(&self.filter_bytes),
            parked: get(&self.parked),
            passivated: get(&self.passivated),
            passivated_sales: get(&self.passivated_sales),
            holdings: get(&self.holdings),
        }
    }
}

/// What a shard runs: decides commands and reports through [`Effects`].
/// Replies for a command may be produced in a later round (the Redis engine
/// answers when its round trip is back), but always in command order.
pub trait Backend: Send + 'static {
    /// Something the backend waits for besides commands (Redis replies).
    type Event: Send + 'static;

    /// The channel of those events, if the backend has any.
    fn events(&self) -> Option<Receiver<Self::Event>> {
        None
    }

    /// False while the backend cannot take more work (its rounds in flight
    /// are at their cap): the runner then waits for events only.
    fn accepts_commands(&self) -> bool {
        true
    }

    /// Executes a batch of commands, in order.
    fn execute(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects);

    /// One event from [`Backend::events`].
    fn on_event(&mut self, _event: Self::Event, _fx: &mut Effects) {}

    /// Updates from other nodes, for this shard's subscribers.
    fn on_remote(&mut self, _pushes: Vec<Push>, _fx: &mut Effects) {}

    /// A connection closed.
    fn disconnect(&mut self, conn: ConnRef);

    /// Called once per loop turn, after the turn's messages.
    fn tick(&mut self, _fx: &mut Effects) {}

    /// Periodic upkeep (`--sweep-interval`): closings by time, expiries.
    fn sweep(&mut self, now_ms: u64, fx: &mut Effects);

    /// What this backend holds in memory (auctions and sales: the local
    /// engine only).
    fn sizes(&self) -> Sizes {
        Sizes::default()
    }
}
