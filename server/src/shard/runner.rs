//! The shard thread: waits for commands (and the backend's events), executes
//! them in batches, and releases each round's replies — straight to the
//! event loops, or through the store writer when they must wait for a
//! commit. Generic over the [`Backend`]; the same loop serves both engines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use gavel_protocol::ErrorCode;

use super::{Backend, ShardMsg, SizeGauges};
use crate::clock::now_ms;
use crate::engine::command::Command;
use crate::engine::effects::Effects;
use crate::outbox::LoopHandle;
use crate::store::writer::{Round, WriterHandle};

/// Most commands executed before replies are released, so a flood on one
/// shard cannot delay every reply indefinitely.
const MAX_COMMANDS_PER_ROUND: usize = 8192;

/// What a shard thread is given besides its backend.
pub struct ShardContext {
    pub index: usize,
    pub rx: Receiver<ShardMsg>,
    /// Commands sent and not yet executed (shared with the event loops).
    pub queued: Arc<AtomicUsize>,
    pub loops: Vec<LoopHandle>,
    /// Period of the sweep that closes auctions past their end.
    pub sweep_interval: Duration,
    /// The store writer; `None` with `--store memory`.
    pub writer: Option<WriterHandle>,
    /// Where the shard publishes its [`super::Sizes`] after each round.
    pub sizes: Arc<SizeGauges>,
}

/// Starts the shard thread. It exits when every sender of the queue is dropped.
pub fn spawn<B: Backend>(
    ctx: ShardContext,
    backend: B,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("gavel-shard-{}", ctx.index))
        .spawn(move || Runner::new(ctx, backend).run())
}

struct Runner<B: Backend> {
    ctx: ShardContext,
    backend: B,
    events: Receiver<B::Event>,
    /// Stands in for the queue while the backend takes no commands.
    no_commands: Receiver<ShardMsg>,
    fx: Effects,
    next_sweep: Instant,
}

/// Every sender of the shard's queue is gone: the server is stopping.
struct QueueClosed;

impl<B: Backend> Runner<B> {
    fn new(ctx: ShardContext, backend: B) -> Self {
        let events = backend.events().unwrap_or_else(crossbeam_channel::never);
        Runner {
            fx: Effects::new(ctx.loops.len()),
            next_sweep: Instant::now() + ctx.sweep_interval,
            ctx,
            backend,
            events,
            no_commands: crossbeam_channel::never(),
        }
    }

    fn run(mut self) {
        loop {
            let first = match self.wait() {
                Ok(m) => m,
                Err(QueueClosed) => return,
            };
            let now = now_ms();
            let executed = first.map_or(0, |m| self.drain(m, now));
            self.backend.tick(&mut self.fx);
            if Instant::now() >= self.next_sweep {
                self.backend.sweep(now, &mut self.fx);
                self.next_sweep = Instant::now() + self.ctx.sweep_interval;
            }
            self.release();
            self.ctx.sizes.store(self.backend.sizes());
            if executed > 0 {
                let before = self.ctx.queued.fetch_sub(executed, Ordering::AcqRel);
                debug_assert!(before >= executed, "queue count went below zero");
            }
        }
    }

    /// Waits for the first message of a round, handling backend events that
    /// arrive meanwhile; `None` when it is time for upkeep only.
    fn wait(&mut self) -> Result<Option<ShardMsg>, QueueClosed> {
        let timeout = self.next_sweep.saturating_duration_since(Instant::now());
        let cmds = if self.backend.accepts_commands() {
            &self.ctx.rx
        } else {
            &self.no_commands
        };
        crossbeam_channel::select! {
            recv(cmds) -> m => m.map(Some).map_err(|_| QueueClosed),
            recv(self.events) -> e => {
                if let Ok(e) = e {
                    self.fx.unstamp();
                    self.backend.on_event(e, &mut self.fx);
                }
                Ok(None)
            },
            default(timeout) => Ok(None),
        }
    }

    /// Handles `first` and whatever else is queued, up to the round's cap.
    /// Returns the number of commands executed.
    fn drain(&mut self, first: ShardMsg, now: u64) -> usize {
        let mut executed = 0usize;
        let mut msg = Some(first);
        while let Some(m) = msg {
            match m {
                ShardMsg::Batch(cmds) => {
                    self.execute(&cmds, now);
                    executed += cmds.len();
                }
                ShardMsg::Disconnect(c) => self.backend.disconnect(c),
                ShardMsg::Remote(pushes) => {
                    self.fx.unstamp();
                    self.backend.on_remote(pushes, &mut self.fx);
                }
            }
            if executed >= MAX_COMMANDS_PER_ROUND || !self.backend.accepts_commands() {
                break;
            }
            msg = self.ctx.rx.try_recv().ok();
        }
        executed
    }

    /// Executes a batch, unless the store refuses writes now: then each
    /// mutating command is answered with the refusal (it was not executed)
    /// and the rest run around it, in order.
    fn execute(&mut self, cmds: &[Command], now: u64) {
        let refusal = self.ctx.writer.as_ref().and_then(|w| w.gate.refuse());
        let Some(code) = refusal else {
            return self.backend.execute(cmds, now, &mut self.fx);
        };
        let mut start = 0;
        for (i, c) in cmds.iter().enumerate() {
            if c.op.is_mutating() {
                self.run_slice(&cmds[start..i], now);
                self.refuse(c, code);
                start = i + 1;
            }
        }
        self.run_slice(&cmds[start..], now);
    }

    fn run_slice(&mut self, cmds: &[Command], now: u64) {
        if !cmds.is_empty() {
            self.backend.execute(cmds, now, &mut self.fx);
        }
    }

    fn refuse(&mut self, c: &Command, code: ErrorCode) {
        self.fx.stamp(c);
        self.fx.error(c, code);
    }

    /// Hands the round to the writer (mutations, and in durable mode the
    /// replies that wait for their commit); what it does not hold goes to
    /// the event loops now.
    fn release(&mut self) {
        if let Some(w) = &self.ctx.writer {
            let round = Round {
                shard: self.ctx.index,
                mutations: std::mem::take(&mut self.fx.mutations),
                replies: if w.gate.durable {
                    self.fx.replies.iter_mut().map(std::mem::take).collect()
                } else {
                    Vec::new()
                },
            };
            if let Some(back) = w.submit(round) {
                // Nothing to wait for: release as the memory store does.
                self.fx.mutations = back.mutations;
                for (io, r) in back.replies.into_iter().enumerate() {
                    self.fx.replies[io] = r;
                }
            }
        }
        // Memory store: mutations are not persisted.
        self.fx.mutations.clear();
        for (io, l) in self.ctx.loops.iter().enumerate() {
            l.deliver(std::mem::take(&mut self.fx.replies[io]));
        }
    }
}
