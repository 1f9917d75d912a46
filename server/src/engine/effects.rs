//! What executing commands produces: replies per event loop, and mutations.
//!
//! Engines (the local [`super::state::ShardState`] and the Redis engine) write
//! into an [`Effects`]; the shard runner drains it once per round, handing
//! mutations to the store writer and replies to the event loops.

use gavel_protocol::{ErrorCode, ResultPayload, FLAG_REPLAYED};

use super::command::{Command, ConnRef, Outgoing, Reply};
use super::limits::Cap;
use super::mutation::Mutation;
use super::parked::Wanted;

/// Output of one shard round.
pub struct Effects {
    /// Replies and pushes, one list per event loop.
    pub replies: Vec<Vec<Outgoing>>,
    pub mutations: Vec<Mutation>,
    /// What to read from the store before waiting commands can run (the
    /// local engine with a durable store; see `engine::parked`).
    pub lookups: Vec<Wanted>,
    /// Stamp of the command being answered, copied into its replies (for
    /// the latency histogram and per-type metrics).
    cur: (u32, u8),
}

impl Effects {
    pub fn new(io_loops: usize) -> Self {
        Effects {
            replies: (0..io_loops).map(|_| Vec::new()).collect(),
            mutations: Vec::new(),
            lookups: Vec::new(),
            cur: (0, 0),
        }
    }

    pub fn send(&mut self, to: ConnRef, reply: Reply) {
        let (t0_us, kind) = match reply {
            Reply::Push(_) => (0, 0),
            _ => self.cur,
        };
        self.replies[to.io as usize].push(Outgoing {
            slot: to.slot,
            gen: to.gen,
            t0_us,
            kind,
            subs: 0,
            reply,
        });
    }

    /// Replies sent from now on answer `c` (for latency metrics).
    pub fn stamp(&mut self, c: &Command) {
        self.cur = (c.t0_us, c.kind);
    }

    /// Replies sent from now on answer nothing in particular (a sweep, an
    /// update from another node).
    pub fn unstamp(&mut self) {
        self.cur = (0, 0);
    }

    pub fn result(&mut self, to: ConnRef, request_id: u32, result: ResultPayload, replayed: bool) {
        let flags = if replayed { FLAG_REPLAYED } else { 0 };
        self.send(
            to,
            Reply::Result {
                request_id,
                flags,
                result,
            },
        );
    }

    /// A SUBSCRIBE's or UNSUBSCRIBE's RESULT, with how it changed the
    /// connection's subscriptions (see [`Outgoing::subs`]).
    pub fn subscription_result(
        &mut self,
        to: ConnRef,
        request_id: u32,
        result: ResultPayload,
        subs: i8,
    ) {
        self.result(to, request_id, result, false);
        if let Some(last) = self.replies[to.io as usize].last_mut() {
            last.subs = subs;
        }
    }

    /// Answers `c`: refused at a configured cap, not executed.
    pub fn refuse(&mut self, c: &Command, limit: Cap) {
        self.send(
            c.conn,
            Reply::Refused {
                request_id: c.request_id,
                limit,
            },
        );
    }

    /// Answers `c` with an ERROR.
    pub fn error(&mut self, c: &Command, code: ErrorCode) {
        self.send(
            c.conn,
            Reply::Error {
                request_id: c.request_id,
                code,
            },
        );
    }

    /// Whether nothing is waiting to be released.
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty() && self.replies.iter().all(Vec::is_empty)
    }
}
