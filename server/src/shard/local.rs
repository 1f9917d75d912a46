//! The local engine as a shard [`Backend`]: state in this process's memory.
//!
//! With a durable store it is also linked to the lookups ([`KeyLookups`]):
//! the engine's lookups (keys, passivated auctions) go to the lookup
//! thread, its answers come back as backend events, and once per turn the
//! engine learns how many of its tracked mutations the tables hold (so old
//! accepted keys and closed auctions may leave memory).
//!
//! Memory that passivation frees goes back to the system: glibc keeps freed
//! blocks in the thread's arena (measured: 1M auctions passivated, RSS did
//! not move), so after every [`TRIM_AFTER`] departures the shard calls
//! `malloc_trim`, which returns the arenas' free pages.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use gavel_protocol::ErrorCode;

use super::{Backend, Sizes};
use crate::clock::now_ms;
use crate::engine::command::{Command, ConnRef};
use crate::engine::effects::Effects;
use crate::engine::parked::Answer;
use crate::engine::state::ShardState;
use crate::store::gate::StoreGate;
use crate::store::lookup::{LookupAnswer, LookupRequest};

/// A shard's link to the store for keys that left memory.
pub struct KeyLookups {
    pub shard: usize,
    pub gate: Arc<StoreGate>,
    pub requests: Sender<LookupRequest>,
    pub answers: Receiver<LookupAnswer>,
}

/// The local engine, with its store link when it has one.
pub struct LocalShard {
    state: ShardState,
    lookups: Option<KeyLookups>,
    /// Auctions and sales that left memory since the last trim.
    left_since_trim: usize,
}

/// Departures (auctions and sales passivated) between two `malloc_trim`s:
/// ~5 MB of auctions; a trim walks the arenas (milliseconds), so not often.
const TRIM_AFTER: usize = 65_536;

/// Returns free heap pages to the system (glibc only; elsewhere a no-op).
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl LocalShard {
    /// `lookups`: with a durable store (the state was then backed with it
    /// before recovery: `ShardState::back_with_store`).
    pub fn new(state: ShardState, lookups: Option<KeyLookups>) -> Self {
        LocalShard {
            state,
            lookups,
            left_since_trim: 0,
        }
    }

    /// Sends the round's lookups; one that cannot be queued is refused
    /// BUSY at once (its command was not executed).
    fn dispatch(&mut self, fx: &mut Effects) {
        while let Some(wanted) = fx.lookups.pop() {
            let Some(l) = &self.lookups else {
                debug_assert!(false, "a lookup without a store");
                continue;
            };
            let req = LookupRequest {
                shard: l.shard,
                wanted,
            };
            let refused = match l.requests.try_send(req) {
                Ok(()) => continue,
                Err(TrySendError::Full(_)) => ErrorCode::Busy,
                Err(TrySendError::Disconnected(_)) => ErrorCode::Unavailable,
            };
            let answer = Answer::Refused(refused);
            self.state.looked_up(wanted, answer, now_ms(), fx);
        }
    }
}

impl Backend for LocalShard {
    type Event = LookupAnswer;

    fn events(&self) -> Option<Receiver<LookupAnswer>> {
        self.lookups.as_ref().map(|l| l.answers.clone())
    }

    fn execute(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects) {
        self.state.execute_batch(cmds, now_ms, fx);
        if !fx.lookups.is_empty() {
            self.dispatch(fx);
        }
    }

    fn on_event(&mut self, answer: LookupAnswer, fx: &mut Effects) {
        self.state
            .looked_up(answer.wanted, answer.answer, now_ms(), fx);
        self.dispatch(fx);
    }

    fn disconnect(&mut self, conn: ConnRef) {
        self.state.disconnect(conn);
    }

    fn tick(&mut self, _fx: &mut Effects) {
        if let Some(l) = &self.lookups {
            self.state.keys_applied(l.gate.keys_applied(l.shard));
            if l.gate.quarantined() {
                self.state.hold_passivation();
            }
        }
    }

    fn sweep(&mut self, now_ms: u64, fx: &mut Effects) {
        fx.unstamp();
        let out = |s: Sizes| s.passivated + s.passivated_sales;
        let before = out(self.state.sizes());
        self.state.sweep(now_ms, fx);
        self.left_since_trim += out(self.state.sizes()).saturating_sub(before);
        if self.left_since_trim >= TRIM_AFTER {
            self.left_since_trim = 0;
            give_back_memory();
        }
    }

    fn sizes(&self) -> Sizes {
        self.state.sizes()
    }
}
