//! The materializer: applies committed journal records to the queryable
//! tables in large transactions, off the reply path.
//!
//! It folds every record waiting for it into one [`WriteBatch`] (many bids
//! on one auction collapse into one state row update; every bid and order
//! is kept for the logs) and applies it with the last record's sequence in
//! the same transaction. Its lag (mutations journaled and not applied) is
//! bounded: at `--materializer-max-lag` the gate answers new mutating
//! requests BUSY rather than let it grow. A failed apply is retried with
//! backoff; at shutdown it gives up after a few attempts — the journal
//! still holds the records, and the next start applies them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::gate::StoreGate;
use super::{Tables, WriteBatch};
use crate::backoff::Backoff;
use crate::engine::mutation::Mutation;
use crate::metrics::Metrics;

/// One committed journal record, handed over by the writer.
pub struct Committed {
    pub seq: u64,
    pub mutations: Vec<Mutation>,
    /// When its append returned.
    pub at: Instant,
}

/// Most mutations folded into one transaction.
const BATCH_MAX: usize = 200_000;
/// Attempts at shutdown before leaving the rest to the next start.
const ATTEMPTS_AT_EXIT: u32 = 5;

pub fn spawn(
    tables: Box<dyn Tables>,
    gate: Arc<StoreGate>,
    metrics: Arc<Metrics>,
    pause: Duration,
) -> std::io::Result<(Sender<Committed>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let m = Materializer {
        tables,
        gate,
        metrics,
        batch: WriteBatch::default(),
        last_seq: 0,
        oldest: None,
        first_attempt: true,
        backoff: Backoff::new(),
        pause,
    };
    let t = std::thread::Builder::new()
        .name("gavel-materializer".into())
        .spawn(move || {
            lower_priority();
            m.run(rx)
        })?;
    Ok((tx, t))
}

/// The materializer works off the reply path: on a busy machine the event
/// loops, shards and the journal writer get the CPU first (nice +10), and
/// the lag bound turns a starved materializer into BUSY back-pressure.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id; no memory is touched.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) != 0 {
            tracing::debug!("could not lower the materializer's priority");
        }
    }
}

struct Materializer {
    tables: Box<dyn Tables>,
    gate: Arc<StoreGate>,
    metrics: Arc<Metrics>,
    batch: WriteBatch,
    last_seq: u64,
    /// When the oldest record in `batch` was committed.
    oldest: Option<Instant>,
    first_attempt: bool,
    backoff: Backoff,
    /// `--materializer-pause` (fault drills): wait before each transaction.
    pause: Duration,
}

impl Materializer {
    fn run(mut self, rx: Receiver<Committed>) {
        let mut failures_at_exit = 0;
        loop {
            let open = self.gather(&rx);
            if self.batch.is_empty() {
                if !open {
                    return;
                }
                continue;
            }
            if !self.pause.is_zero() && open {
                std::thread::sleep(self.pause);
                self.gather(&rx);
            }
            if self.apply() {
                continue;
            }
            if !open {
                failures_at_exit += 1;
                if failures_at_exit >= ATTEMPTS_AT_EXIT {
                    tracing::warn!(
                        mutations = self.batch.mutations,
                        "stopping with journal records not yet in the tables; the next start applies them"
                    );
                    return;
                }
            }
            std::thread::sleep(self.backoff.next_delay());
        }
    }

    /// Folds what is waiting into the batch (blocking for the first record
    /// when the batch is empty); false once the writer is gone.
    fn gather(&mut self, rx: &Receiver<Committed>) -> bool {
        if self.batch.is_empty() {
            match rx.recv() {
                Ok(c) => self.fold(c),
                Err(_) => return false,
            }
        }
        while self.batch.mutations < BATCH_MAX {
            match rx.try_recv() {
                Ok(c) => self.fold(c),
                Err(crossbeam_channel::TryRecvError::Empty) => return true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn fold(&mut self, c: Committed) {
        debug_assert!(c.seq > self.last_seq, "records arrive in sequence order");
        for m in &c.mutations {
            self.batch.add(m);
        }
        self.last_seq = c.seq;
        self.oldest.get_or_insert(c.at);
    }

    /// One transaction; true if it committed.
    fn apply(&mut self) -> bool {
        if let Some(t) = self.oldest {
            self.metrics
                .store
                .lag_seconds
                .set(t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        self.batch.sort_logs();
        let r = self
            .tables
            .apply(&self.batch, self.last_seq, self.first_attempt);
        let took = t.elapsed().as_micros() as u64;
        self.metrics.store.apply_seconds.observe(took);
        if let Err(e) = r {
            self.metrics.store.store_errors.inc();
            if self.first_attempt {
                tracing::error!(error = %e, "materializing the journal failed; retrying");
            }
            self.first_attempt = false;
            return false;
        }
        let n = self.batch.mutations;
        self.metrics.store.apply_batch.observe(n as u64);
        self.gate.applied(n, self.last_seq);
        self.batch.clear();
        self.oldest = None;
        self.first_attempt = true;
        self.backoff.reset();
        true
    }
}
