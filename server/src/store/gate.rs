//! What shards consult before applying a mutating request: whether the store
//! takes writes now, and how much is waiting to be journaled or materialized.
//! Shared by the shards, the writer and the materializer; all atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use gavel_protocol::ErrorCode;

pub struct StoreGate {
    /// False while the journal is failing (breaker open), and until every
    /// mutation applied before the failure is committed.
    up: AtomicBool,
    /// Mutations sent to the writer and not yet journaled.
    queued: AtomicUsize,
    queue_cap: usize,
    /// Mutations journaled and not yet applied to the tables.
    lag: AtomicUsize,
    lag_cap: usize,
    /// The last journal record the tables hold.
    applied_seq: AtomicU64,
    /// Durable mode holds replies until commit; async releases them at once.
    pub durable: bool,
    /// Per shard: rounds whose replies the writer still holds. A shard whose
    /// count is 0 may release a mutation-free round directly without
    /// overtaking anything.
    held: Vec<AtomicUsize>,
    /// Per shard: how many of its keyed mutations (accepted bids and
    /// purchases) the tables hold, counted in the order the shard emitted
    /// them. Its accepted keys up to that ordinal may leave memory.
    keys_applied: Vec<AtomicU64>,
    /// A journal record was quarantined (this run or before): some rows
    /// may be missing from the tables, so nothing may leave memory to be
    /// read back from them (see `store::quarantined`).
    quarantined: AtomicBool,
}

impl StoreGate {
    pub fn new(shards: usize, queue_cap: usize, lag_cap: usize, durable: bool) -> Self {
        StoreGate {
            up: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            queue_cap,
            lag: AtomicUsize::new(0),
            lag_cap,
            applied_seq: AtomicU64::new(0),
            durable,
            held: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            keys_applied: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            quarantined: AtomicBool::new(false),
        }
    }

    /// Why a mutating request must be refused now, if it must. Refused
    /// requests are not executed.
    #[inline]
    pub fn refuse(&self) -> Option<ErrorCode> {
        if self.durable && !self.up.load(Ordering::Relaxed) {
            Some(ErrorCode::Unavailable)
        } else if self.queued.load(Ordering::Relaxed) >= self.queue_cap
            || self.lag.load(Ordering::Relaxed) >= self.lag_cap
        {
            Some(ErrorCode::Busy)
        } else {
            None
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn lag(&self) -> usize {
        self.lag.load(Ordering::Relaxed)
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    /// `n` mutations are on their way to the writer.
    pub(super) fn enqueue(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` mutations were journaled: from the writer's queue to the lag.
    pub(super) fn journaled(&self, n: usize) {
        self.lag.fetch_add(n, Ordering::AcqRel);
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "writer queue count went below zero");
    }

    /// `n` mutations, up to journal record `seq`, are in the tables.
    pub(super) fn applied(&self, n: usize, seq: u64) {
        let before = self.lag.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "materializer lag went below zero");
        let prev = self.applied_seq.swap(seq, Ordering::AcqRel);
        debug_assert!(prev <= seq, "applied sequence went back");
    }

    pub fn shards(&self) -> usize {
        self.keys_applied.len()
    }

    /// The materializer applied `counts[i]` more keyed mutations of shard `i`.
    pub(super) fn keys_applied_add(&self, counts: &[u64]) {
        debug_assert_eq!(counts.len(), self.keys_applied.len());
        for (a, &n) in self.keys_applied.iter().zip(counts) {
            if n > 0 {
                a.fetch_add(n, Ordering::Release);
            }
        }
    }

    /// Shard `shard`'s keyed mutations the tables hold.
    #[inline]
    /// A record is (or was) quarantined: see the field.
    pub fn set_quarantined(&self) {
        self.quarantined.store(true, Ordering::Release);
    }

    pub fn quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }

    pub fn keys_applied(&self, shard: usize) -> u64 {
        self.keys_applied[shard].load(Ordering::Acquire)
    }

    /// Recovery: the tables hold everything up to `seq`.
    pub fn start_at(&self, seq: u64) {
        self.applied_seq.store(seq, Ordering::Release);
    }

    pub(super) fn hold(&self, shard: usize) {
        self.held[shard].fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn unhold(&self, shard: usize) {
        let before = self.held[shard].fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "released a round that was not held");
    }

    pub(super) fn holds(&self, shard: usize) -> bool {
        self.held[shard].load(Ordering::Acquire) > 0
    }
}
