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
//! The store calls run on a thread of their own (`gavel-journal`), one
//! append in flight at a time: the writer's loop never blocks on the store,
//! so a stalled disk or server cannot keep it from answering held replies
//! when their `--store-timeout` passes.
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

use crossbeam_channel::{Receiver, Sender};
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
    // Unbounded in type, bounded in effect: a round carrying mutations is
    // only sent after StoreGate admitted them (shards refuse mutating
    // requests BUSY once --writer-queue mutations wait, checked per batch,
    // so at most one batch per shard over it); a round without mutations
    // (durable mode, while its shard has rounds held) is one per shard
    // round, and held rounds are released, IN_DOUBT at worst, after
    // --store-timeout. This loop never blocks on the store, only on a full
    // event-loop reply queue, which always drains (crate::outbox), so it
    // keeps emptying the channel.
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = WriterHandle {
        tx,
        gate: gate.clone(),
    };
    let (jobs, done) = spawn_syncer(journal)?;
    let w = BatchWriter {
        gate,
        loops,
        cfg,
        metrics,
        materializer,
        jobs,
        pending: VecDeque::new(),
        record: Some(Vec::new()),
        record_mutations: Vec::new(),
        record_seq: 0,
        next_seq: cfg.next_seq.max(1),
        truncated: 0,
        record_failed: false,
        in_flight: None,
        held: VecDeque::new(),
        received: 0,
        committed: 0,
        first_at: None,
        retry_at: None,
        backoff: Backoff::new(),
    };
    let t = std::thread::Builder::new()
        .name("gavel-writer".into())
        .spawn(move || w.run(rx, done))?;
    Ok((handle, t))
}

/// What the writer asks of the journal's thread.
enum Job {
    Append {
        seq: u64,
        record: Vec<u8>,
        truncate: u64,
        first: bool,
    },
    Ping,
}

/// The journal thread's answer: the result, and the record's buffer back.
struct Done {
    result: Result<(), StoreError>,
    record: Option<Vec<u8>>,
}

/// Starts the thread that owns the journal and runs its blocking calls.
fn spawn_syncer(mut journal: Box<dyn Journal>) -> std::io::Result<(Sender<Job>, Receiver<Done>)> {
    let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(1);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("gavel-journal".into())
        .spawn(move || {
            for job in job_rx {
                let d = match job {
                    Job::Append {
                        seq,
                        record,
                        truncate,
                        first,
                    } => Done {
                        result: journal.append(seq, &record, truncate, first),
                        record: Some(record),
                    },
                    Job::Ping => Done {
                        result: journal.ping(),
                        record: None,
                    },
                };
                if done_tx.send(d).is_err() {
                    return;
                }
            }
        })?;
    Ok((jobs, done))
}

/// The store call in flight.
struct InFlight {
    /// An append (not a ping), with the truncation it carried.
    append: Option<u64>,
    since: Instant,
}

pub struct BatchWriter {
    gate: Arc<StoreGate>,
    loops: Vec<LoopHandle>,
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
    materializer: Sender<Committed>,
    jobs: Sender<Job>,
    /// Mutations received and not yet in a commit attempt, oldest first.
    pending: VecDeque<Mutation>,
    /// The record being committed (kept, same bytes, across failed
    /// attempts); `None` while the journal thread has it.
    record: Option<Vec<u8>>,
    record_mutations: Vec<Mutation>,
    record_seq: u64,
    next_seq: u64,
    /// Journal records at or below this were removed.
    truncated: u64,
    /// An append of this record failed; the next attempt must be idempotent.
    record_failed: bool,
    in_flight: Option<InFlight>,
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

    fn run(mut self, rx: Receiver<Round>, done: Receiver<Done>) {
        let mut open = true;
        let closed = crossbeam_channel::never();
        while open || self.uncommitted() > 0 || self.in_flight.is_some() {
            let timeout = self
                .next_deadline(Instant::now())
                .map_or(Backoff::MAX, |d| {
                    d.saturating_duration_since(Instant::now())
                });
            let rounds = if open { &rx } else { &closed };
            crossbeam_channel::select! {
                recv(rounds) -> r => match r {
                    Ok(r) => {
                        self.accept(r);
                        while let Ok(r) = rx.try_recv() {
                            self.accept(r);
                        }
                    }
                    Err(_) => open = false,
                },
                recv(done) -> d => match d {
                    Ok(d) => self.finished(d),
                    Err(_) => return self.release_all_in_doubt(),
                },
                default(timeout) => {}
            }
            if self.in_flight.is_none() && self.due(open, Instant::now()) {
                self.start();
            }
            self.expire_held(Instant::now());
            if !open && self.give_up_on_exit() {
                break;
            }
        }
        // Replies held for mutations never committed were answered IN_DOUBT
        // by expire_held, or are answered so now.
        self.release_all_in_doubt();
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
        let mut d = match (self.retry_at, self.first_at, &self.in_flight) {
            (_, _, Some(_)) => None,
            (Some(r), _, None) => Some(r),
            (None, Some(f), None) => Some(f + self.cfg.flush_interval),
            (None, None, None) => None,
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

    /// Hands the next record (or, with nothing to write while the breaker
    /// is open, a ping) to the journal thread.
    fn start(&mut self) {
        debug_assert!(self.in_flight.is_none(), "one store call at a time");
        let job = if self.next_record() {
            let applied = self.gate.applied_seq();
            let truncate = if applied > self.truncated { applied } else { 0 };
            let record = self.record.take().expect("the record is home");
            self.in_flight = Some(InFlight {
                append: Some(truncate),
                since: Instant::now(),
            });
            Job::Append {
                seq: self.record_seq,
                record,
                truncate,
                first: !self.record_failed,
            }
        } else {
            self.in_flight = Some(InFlight {
                append: None,
                since: Instant::now(),
            });
            Job::Ping
        };
        // The journal thread only exits when this sender is dropped.
        let _ = self.jobs.send(job);
    }

    /// A store call came back.
    fn finished(&mut self, d: Done) {
        let f = self.in_flight.take().expect("a call was in flight");
        if let Some(record) = d.record {
            self.record = Some(record);
        }
        let took = f.since.elapsed().as_micros() as u64;
        match (d.result, f.append) {
            (Ok(()), Some(truncate)) => {
                self.metrics.store.flush_seconds.observe(took);
                self.truncated = self.truncated.max(truncate);
                self.committed_record();
                if self.uncommitted() == 0 {
                    self.first_at = None;
                    // Writes resume only now: nothing applied before the
                    // outage is still waiting for its commit.
                    self.recovered();
                } else if self.retry_at.is_some() {
                    // Recovering: commit the rest at once.
                    self.retry_at = Some(Instant::now());
                }
            }
            (Ok(()), None) => self.recovered(),
            (Err(e), append) => {
                if append.is_some() {
                    self.metrics.store.flush_seconds.observe(took);
                    // A transient failure may have committed: the next
                    // attempt must be idempotent. A refusal (say, the
                    // sequence already taken) did not, and an idempotent
                    // retry would wrongly take the existing row for ours.
                    self.record_failed |= !e.is_permanent();
                }
                self.failed(e);
            }
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
        let record = self.record.as_mut().expect("the record is home");
        journal::encode(&self.record_mutations, record);
        self.record_seq = self.next_seq;
        self.next_seq += 1;
        self.record_failed = false;
        true
    }

    /// The record is on disk: release what waited for it, hand its
    /// mutations to the materializer.
    fn committed_record(&mut self) {
        let n = self.record_mutations.len();
        let bytes = self.record.as_ref().map_or(0, Vec::len);
        self.metrics.store.batch_size.observe(n as u64);
        self.metrics.store.journal_bytes.inc_by(bytes as u64);
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
        if e.is_permanent() {
            // Retrying cannot help; nothing may be dropped either.
            tracing::error!(error = %e, pending = self.uncommitted(), "the journal refuses the append: writes stay refused until an operator fixes the store");
        } else if self.retry_at.is_none() {
            tracing::error!(error = %e, pending = self.uncommitted(), "journal append failed; refusing writes until it recovers");
        } else {
            tracing::debug!(error = %e, "store still unavailable");
        }
        self.gate.set_up(false);
        self.retry_at = Some(self.backoff.next_attempt());
    }

    /// Answers IN_DOUBT for held rounds that waited past the store timeout.
    /// Runs whatever the store does: its calls are on another thread.
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

    /// At shutdown, keep trying for two store timeouts, then stop (also
    /// with a call stuck in the store): what is uncommitted was answered
    /// IN_DOUBT, and stays in memory only.
    fn give_up_on_exit(&self) -> bool {
        let waiting_since = self.first_at.or(self.in_flight.as_ref().map(|f| f.since));
        self.held.is_empty()
            && waiting_since.is_some_and(|t| t.elapsed() > self.cfg.store_timeout * 2)
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
