//! The journal writer: group commit of the shards' mutations.
//!
//! Every shard round that made mutations is sent here as a [`Round`] (its
//! mutations and, in durable mode, its replies). The writer commits as soon
//! as it has something and no commit is running: while one append is being
//! synced, the rounds that arrive queue up and go together in the next one
//! (group commit without a timer; `--flush-interval` can add a wait). Each
//! commit is one journal record appended in one transaction; replies are
//! released to the event loops only after the append holding their
//! mutations is on disk, in the order the shards produced them. Committed
//! mutations then go to the materializer, off the reply path.
//!
//! Journal failures open a circuit breaker ([`StoreGate`]): shards then
//! answer mutating requests ERROR UNAVAILABLE without applying them (they
//! were not executed); held replies older than `--store-timeout` are
//! answered IN_DOUBT (applied, and committed later or never: the client's
//! retry with the same key tells); the writer retries the pending record,
//! or a ping, with backoff. Nothing is dropped: mutations applied before
//! the outage are committed when the store returns, and the breaker closes
//! only once all of them are, so a retry is never answered from a state
//! whose commit is still pending.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gavel_protocol::ErrorCode;

use super::gate::StoreGate;
use super::materializer::Committed;
use super::{journal, Journal, StoreError};
use crate::backoff::Backoff;
use crate::engine::command::{Outgoing, Reply};
use crate::engine::mutation::Mutation;
use crate::metrics::Metrics;
use crate::outbox::LoopHandle;

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
        if round.mutations.is_empty() && (!g.durable || !g.holds(round.shard)) {
            return Some(round);
        }
        g.enqueue(round.mutations.len());
        if g.durable {
            g.hold(round.shard);
        }
        // The writer only exits after every handle is dropped.
        let _ = self.tx.send(round);
        None
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Extra wait before a commit (0: commit as soon as idle).
    pub flush_interval: Duration,
    pub batch_max: usize,
    pub store_timeout: Duration,
    /// The first journal sequence to use (after recovery's last).
    pub next_seq: u64,
}

struct Held {
    shard: usize,
    replies: Vec<Vec<Outgoing>>,
    since: Instant,
    /// Released once this many mutations (counted since start) are committed.
    upto: u64,
}

pub fn spawn(
    journal: Box<dyn Journal>,
    gate: Arc<StoreGate>,
    loops: Vec<LoopHandle>,
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
    materializer: Sender<Committed>,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = WriterHandle {
        tx,
        gate: gate.clone(),
    };
    let w = BatchWriter {
        journal,
        gate,
        loops,
        cfg,
        metrics,
        materializer,
        pending: VecDeque::new(),
        record: Vec::new(),
        record_mutations: Vec::new(),
        record_seq: 0,
        next_seq: cfg.next_seq.max(1),
        truncated: 0,
        record_failed: false,
        held: VecDeque::new(),
        received: 0,
        committed: 0,
        first_at: None,
        retry_at: None,
        backoff: Backoff::new(),
    };
    let t = std::thread::Builder::new()
        .name("gavel-writer".into())
        .spawn(move || w.run(rx))?;
    Ok((handle, t))
}

pub struct BatchWriter {
    journal: Box<dyn Journal>,
    gate: Arc<StoreGate>,
    loops: Vec<LoopHandle>,
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
    materializer: Sender<Committed>,
    /// Mutations received and not yet in a commit attempt, oldest first.
    pending: VecDeque<Mutation>,
    /// The record being committed (kept, same bytes, across failed attempts).
    record: Vec<u8>,
    record_mutations: Vec<Mutation>,
    record_seq: u64,
    next_seq: u64,
    /// Journal records at or below this were removed.
    truncated: u64,
    /// An append of this record failed; the next attempt must be idempotent.
    record_failed: bool,
    held: VecDeque<Held>,
    received: u64,
    committed: u64,
    /// When the oldest uncommitted mutation arrived.
    first_at: Option<Instant>,
    /// Breaker state: next attempt while failing.
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl BatchWriter {
    fn uncommitted(&self) -> usize {
        self.pending.len() + self.record_mutations.len()
    }

    fn run(mut self, rx: Receiver<Round>) {
        let mut open = true;
        while open || self.uncommitted() > 0 {
            if open {
                open = self.receive(&rx);
            } else if let Some(d) = self.next_deadline(Instant::now()) {
                std::thread::sleep(
                    d.saturating_duration_since(Instant::now())
                        .min(Backoff::MAX),
                );
            }
            if self.due(open, Instant::now()) {
                self.flush();
            }
            self.expire_held(Instant::now());
            if !open && self.retry_at.is_some() && self.give_up_on_exit() {
                break;
            }
        }
        // Replies held for mutations never committed were answered IN_DOUBT
        // by expire_held, or are answered so now.
        self.release_all_in_doubt();
    }

    /// Waits for rounds (until the next deadline) and takes all that are
    /// queued; false once every handle is gone.
    fn receive(&mut self, rx: &Receiver<Round>) -> bool {
        let first = match self.next_deadline(Instant::now()) {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match first {
            Ok(r) => self.accept(r),
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
        while let Ok(r) = rx.try_recv() {
            self.accept(r);
        }
        true
    }

    /// Whether to commit (or probe the store) now.
    fn due(&self, open: bool, now: Instant) -> bool {
        match (self.retry_at, self.first_at) {
            (Some(r), _) => now >= r,
            (None, Some(f)) => {
                !open
                    || self.uncommitted() >= self.cfg.batch_max
                    || now >= f + self.cfg.flush_interval
            }
            (None, None) => false,
        }
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
            let h = self.held.pop_front().expect("checked");
            self.release(h, false);
        }
    }

    /// Commits everything pending, `--batch-max` mutations per record.
    /// Stops at the first failure; the failed record is retried as is.
    fn flush(&mut self) {
        if self.uncommitted() == 0 {
            // Breaker open with nothing to write: probe the store.
            match self.journal.ping() {
                Ok(()) => self.recovered(),
                Err(e) => self.failed(e),
            }
            return;
        }
        while self.next_record() {
            let applied = self.gate.applied_seq();
            let truncate = if applied > self.truncated { applied } else { 0 };
            let t = Instant::now();
            let first = !self.record_failed;
            let result = self
                .journal
                .append(self.record_seq, &self.record, truncate, first);
            let took = t.elapsed().as_micros() as u64;
            self.metrics.store.flush_seconds.observe(took);
            if let Err(e) = result {
                self.record_failed = true;
                return self.failed(e);
            }
            self.truncated = self.truncated.max(truncate);
            self.committed_record();
        }
        self.first_at = None;
        // Writes resume only now: nothing applied before the outage is
        // still waiting for its commit.
        if self.retry_at.is_some() {
            self.recovered();
        }
    }

    /// Makes sure a record is ready to append; false when nothing is pending.
    fn next_record(&mut self) -> bool {
        if !self.record_mutations.is_empty() {
            return true;
        }
        let n = self.pending.len().min(self.cfg.batch_max);
        if n == 0 {
            return false;
        }
        self.record_mutations.extend(self.pending.drain(..n));
        journal::encode(&self.record_mutations, &mut self.record);
        self.record_seq = self.next_seq;
        self.next_seq += 1;
        self.record_failed = false;
        true
    }

    /// The record is on disk: release what waited for it, hand its
    /// mutations to the materializer.
    fn committed_record(&mut self) {
        let n = self.record_mutations.len();
        self.metrics.store.batch_size.observe(n as u64);
        self.metrics
            .store
            .journal_bytes
            .inc_by(self.record.len() as u64);
        self.committed += n as u64;
        debug_assert!(
            self.committed <= self.received,
            "committed more than received"
        );
        self.gate.journaled(n);
        let c = Committed {
            seq: self.record_seq,
            mutations: std::mem::take(&mut self.record_mutations),
            at: Instant::now(),
        };
        // The materializer exits after the writer; if it failed, the
        // journal keeps the record for the next start.
        let _ = self.materializer.send(c);
        self.release_committed();
    }

    fn recovered(&mut self) {
        if self.retry_at.is_some() {
            tracing::info!("store is reachable again; accepting writes");
        }
        self.retry_at = None;
        self.backoff.reset();
        self.gate.set_up(true);
    }

    fn failed(&mut self, e: StoreError) {
        self.metrics.store.store_errors.inc();
        if self.retry_at.is_none() {
            tracing::error!(error = %e, pending = self.uncommitted(), "journal append failed; refusing writes until it recovers");
        } else {
            tracing::debug!(error = %e, "store still unavailable");
        }
        self.gate.set_up(false);
        self.retry_at = Some(self.backoff.next_attempt());
    }

    /// Answers IN_DOUBT for held rounds that waited past the store timeout.
    fn expire_held(&mut self, now: Instant) {
        while self
            .held
            .front()
            .is_some_and(|h| now >= h.since + self.cfg.store_timeout)
        {
            let h = self.held.pop_front().expect("checked");
            self.release(h, true);
        }
    }

    fn give_up_on_exit(&mut self) -> bool {
        // At shutdown, keep retrying within two store timeouts, then stop:
        // what is uncommitted was answered IN_DOUBT.
        self.held.is_empty()
            && self
                .first_at
                .is_some_and(|f| f.elapsed() > self.cfg.store_timeout * 2)
    }

    fn release_all_in_doubt(&mut self) {
        while let Some(h) = self.held.pop_front() {
            self.release(h, true);
        }
    }

    fn release(&mut self, h: Held, in_doubt: bool) {
        for (io, mut replies) in h.replies.into_iter().enumerate() {
            if in_doubt {
                replies.retain_mut(mark_in_doubt);
            }
            self.loops[io].deliver(replies);
        }
        self.gate.unhold(h.shard);
    }
}

/// A held reply whose commit was not confirmed: a RESULT claims an outcome
/// that may never be committed, so it becomes ERROR IN_DOUBT (the request
/// was applied; a retry with the same key tells). Pushes are dropped.
fn mark_in_doubt(o: &mut Outgoing) -> bool {
    o.reply = match o.reply {
        Reply::Result { request_id, .. } => Reply::Error {
            request_id,
            code: ErrorCode::InDoubt,
        },
        Reply::Push(_) => return false,
        other => other,
    };
    true
}
