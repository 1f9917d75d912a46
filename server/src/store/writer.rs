//! The batch writer: group commit of the shards' mutations.
//!
//! Every shard round that made mutations is sent here as a [`Round`] (its
//! mutations and, in durable mode, its replies). The writer folds rounds into
//! one [`WriteBatch`] and commits it every `--flush-interval` or at
//! `--batch-max` mutations, whichever comes first; replies are released to
//! the event loops only after the transaction holding their mutations has
//! committed, in the order the shards produced them.
//!
//! Store failures open a circuit breaker ([`StoreGate`]): shards then answer
//! mutating requests ERROR UNAVAILABLE without applying them, held replies
//! older than `--store-timeout` are answered UNAVAILABLE, and the writer
//! retries (the pending batch, or a ping) with exponential backoff and
//! jitter. Nothing is ever dropped: mutations applied just before the outage
//! are committed when the store returns, before the breaker closes, so a
//! client that retries the same idempotency key then gets the replayed
//! outcome of a committed request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gavel_protocol::ErrorCode;

use super::{Store, StoreError, WriteBatch};
use crate::backoff::Backoff;
use crate::engine::command::{Outgoing, Reply};
use crate::engine::mutation::Mutation;
use crate::metrics::Metrics;
use crate::outbox::LoopHandle;

/// What shards consult before applying a mutating request.
pub struct StoreGate {
    /// False while the store is failing (breaker open).
    up: AtomicBool,
    /// Mutations sent to the writer and not yet committed.
    queued: AtomicUsize,
    queue_cap: usize,
    /// Durable mode holds replies until commit; async releases them at once.
    pub durable: bool,
    /// Per shard: rounds whose replies the writer still holds. A shard whose
    /// count is 0 may release a mutation-free round directly without
    /// overtaking anything.
    held: Vec<AtomicUsize>,
}

impl StoreGate {
    pub fn new(shards: usize, queue_cap: usize, durable: bool) -> Self {
        StoreGate {
            up: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            queue_cap,
            durable,
            held: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Why a mutating request must be refused now, if it must.
    #[inline]
    pub fn refuse(&self) -> Option<ErrorCode> {
        if self.durable && !self.up.load(Ordering::Relaxed) {
            Some(ErrorCode::Unavailable)
        } else if self.queued.load(Ordering::Relaxed) >= self.queue_cap {
            Some(ErrorCode::Busy)
        } else {
            None
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// One shard round handed to the writer.
pub struct Round {
    pub shard: usize,
    pub mutations: Vec<Mutation>,
    /// Replies per event loop; empty in async mode.
    pub replies: Vec<Vec<Outgoing>>,
}

/// The shards' side of the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Round>,
    pub gate: Arc<StoreGate>,
}

impl WriterHandle {
    /// Hands a round over. In durable mode a round without mutations goes
    /// through the writer only if earlier rounds of the same shard are still
    /// held; otherwise the caller releases it itself (returns it back).
    pub fn submit(&self, round: Round) -> Option<Round> {
        let g = &self.gate;
        if round.mutations.is_empty()
            && (!g.durable || g.held[round.shard].load(Ordering::Acquire) == 0)
        {
            return Some(round);
        }
        g.queued.fetch_add(round.mutations.len(), Ordering::Relaxed);
        if g.durable {
            g.held[round.shard].fetch_add(1, Ordering::AcqRel);
        }
        // The writer only exits after every handle is dropped.
        let _ = self.tx.send(round);
        None
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub flush_interval: Duration,
    pub batch_max: usize,
    pub store_timeout: Duration,
}

struct Held {
    shard: usize,
    replies: Vec<Vec<Outgoing>>,
    since: Instant,
    /// Released once this many mutations (counted since start) are committed.
    upto: u64,
}

pub fn spawn(
    store: Box<dyn Store>,
    gate: Arc<StoreGate>,
    loops: Vec<LoopHandle>,
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = WriterHandle {
        tx,
        gate: gate.clone(),
    };
    let t = std::thread::Builder::new()
        .name("gavel-writer".into())
        .spawn(move || BatchWriter::new(store, gate, loops, cfg, metrics).run(rx))?;
    Ok((handle, t))
}

pub struct BatchWriter {
    store: Box<dyn Store>,
    gate: Arc<StoreGate>,
    loops: Vec<LoopHandle>,
    cfg: WriterConfig,
    /// Mutations received and not yet in a commit attempt, oldest first.
    pending: VecDeque<Mutation>,
    /// The batch being committed (kept across failed attempts).
    batch: WriteBatch,
    /// A commit of this batch failed; the next attempt must be idempotent.
    batch_failed: bool,
    held: VecDeque<Held>,
    received: u64,
    committed: u64,
    /// When the oldest uncommitted mutation arrived.
    first_at: Option<Instant>,
    /// Breaker state: next attempt and current backoff while failing.
    retry_at: Option<Instant>,
    backoff: Backoff,
    metrics: Arc<Metrics>,
}

impl BatchWriter {
    fn new(
        store: Box<dyn Store>,
        gate: Arc<StoreGate>,
        loops: Vec<LoopHandle>,
        cfg: WriterConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        BatchWriter {
            store,
            gate,
            loops,
            cfg,
            pending: VecDeque::new(),
            batch: WriteBatch::default(),
            batch_failed: false,
            held: VecDeque::new(),
            received: 0,
            committed: 0,
            first_at: None,
            retry_at: None,
            backoff: Backoff::new(),
            metrics,
        }
    }

    fn uncommitted(&self) -> usize {
        self.pending.len() + self.batch.mutations
    }

    fn run(mut self, rx: Receiver<Round>) {
        let mut open = true;
        while open || self.uncommitted() > 0 {
            let now = Instant::now();
            let deadline = self.next_deadline(now);
            if open {
                let wait = deadline.map(|d| d.saturating_duration_since(now));
                let first = match wait {
                    Some(w) => rx.recv_timeout(w),
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match first {
                    Ok(r) => {
                        self.accept(r);
                        while self.uncommitted() < self.cfg.batch_max {
                            match rx.try_recv() {
                                Ok(r) => self.accept(r),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            } else if let Some(d) = deadline {
                std::thread::sleep(d.saturating_duration_since(now).min(Backoff::MAX));
            }
            let now = Instant::now();
            let due = match (self.retry_at, self.first_at) {
                (Some(r), _) => now >= r,
                (None, Some(f)) => {
                    !open
                        || self.uncommitted() >= self.cfg.batch_max
                        || now >= f + self.cfg.flush_interval
                }
                (None, None) => false,
            };
            if due {
                self.flush();
            }
            self.expire_held(Instant::now());
            if !open && self.retry_at.is_some() && self.give_up_on_exit() {
                break;
            }
        }
        // Replies held for mutations never committed were answered UNAVAILABLE
        // by expire_held, or are dropped with their connections at exit.
        self.release_all_as_unavailable();
    }

    /// When the loop must wake without new input.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut d = match (self.retry_at, self.first_at) {
            (Some(r), _) => Some(r),
            (None, Some(f)) => Some(f + self.cfg.flush_interval),
            (None, None) => None,
        };
        if let Some(h) = self.held.front() {
            let t = h.since + self.cfg.store_timeout;
            d = Some(d.map_or(t, |d| d.min(t)));
        }
        d.map(|d| d.max(now))
    }

    fn accept(&mut self, r: Round) {
        if !r.mutations.is_empty() && self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        self.received += r.mutations.len() as u64;
        self.pending.extend(r.mutations);
        if self.gate.durable {
            self.held.push_back(Held {
                shard: r.shard,
                replies: r.replies,
                since: Instant::now(),
                upto: self.received,
            });
            self.release_committed();
        }
    }

    /// Releases, in order, every held round whose mutations are all committed.
    fn release_committed(&mut self) {
        while self.held.front().is_some_and(|h| h.upto <= self.committed) {
            let h = self.held.pop_front().unwrap();
            self.release(h, false);
        }
    }

    /// Commits everything pending, `--batch-max` mutations per transaction.
    /// Stops at the first failure; the failed batch is retried as is.
    fn flush(&mut self) {
        if self.uncommitted() == 0 {
            // Breaker open with nothing to write: probe the store.
            match self.store.ping() {
                Ok(()) => self.recovered(),
                Err(e) => self.failed(e),
            }
            return;
        }
        loop {
            if self.batch.is_empty() {
                let n = self.pending.len().min(self.cfg.batch_max);
                if n == 0 {
                    break;
                }
                for m in self.pending.drain(..n) {
                    self.batch.add(&m);
                }
            }
            let t = Instant::now();
            let result = self.store.commit(&self.batch, !self.batch_failed);
            self.metrics
                .flush_seconds
                .observe(t.elapsed().as_micros() as u64);
            match result {
                Ok(()) => {
                    let n = self.batch.mutations;
                    self.metrics.batch_size.observe(n as u64);
                    self.batch.clear();
                    self.batch_failed = false;
                    self.committed += n as u64;
                    debug_assert!(
                        self.committed <= self.received,
                        "committed more than received"
                    );
                    let before = self.gate.queued.fetch_sub(n, Ordering::AcqRel);
                    debug_assert!(before >= n, "writer queue count went below zero");
                    self.release_committed();
                    if self.retry_at.is_some() {
                        self.recovered();
                    }
                }
                Err(e) => {
                    self.batch_failed = true;
                    self.failed(e);
                    return;
                }
            }
        }
        self.first_at = None;
    }

    fn recovered(&mut self) {
        if self.retry_at.is_some() {
            tracing::info!("store is reachable again; accepting writes");
        }
        self.retry_at = None;
        self.backoff.reset();
        self.gate.up.store(true, Ordering::Release);
    }

    fn failed(&mut self, e: StoreError) {
        self.metrics.store_errors.inc();
        if self.retry_at.is_none() {
            tracing::error!(error = %e, pending = self.uncommitted(), "store commit failed; refusing writes until it recovers");
        } else {
            tracing::debug!(error = %e, "store still unavailable");
        }
        self.gate.up.store(false, Ordering::Release);
        self.retry_at = Some(self.backoff.next_attempt());
    }

    /// Answers UNAVAILABLE for held rounds that waited past the store timeout.
    fn expire_held(&mut self, now: Instant) {
        while self
            .held
            .front()
            .is_some_and(|h| now >= h.since + self.cfg.store_timeout)
        {
            let h = self.held.pop_front().unwrap();
            self.release(h, true);
        }
    }

    fn give_up_on_exit(&mut self) -> bool {
        // At shutdown, keep retrying within two store timeouts, then stop:
        // nothing uncommitted was acknowledged.
        self.held.is_empty()
            && self
                .first_at
                .is_some_and(|f| f.elapsed() > self.cfg.store_timeout * 2)
    }

    fn release_all_as_unavailable(&mut self) {
        while let Some(h) = self.held.pop_front() {
            self.release(h, true);
        }
    }

    fn release(&mut self, h: Held, unavailable: bool) {
        for (io, mut replies) in h.replies.into_iter().enumerate() {
            if replies.is_empty() {
                continue;
            }
            if unavailable {
                replies.retain_mut(|o| {
                    o.reply = match o.reply {
                        // A RESULT claims execution, which cannot be confirmed.
                        Reply::Result { request_id, .. } => Reply::Error {
                            request_id,
                            code: ErrorCode::Unavailable,
                        },
                        Reply::Push(_) => return false,
                        other => other,
                    };
                    true
                });
            }
            self.loops[io].deliver(replies);
        }
        let before = self.gate.held[h.shard].fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "released a round that was not held");
    }
}
