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
use super::{journal, StoreError, Tables, WriteBatch};
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
        gate: gate.clone(),
        metrics,
        batch: WriteBatch::default(),
        keys: vec![0; gate.shards()],
        records: Vec::new(),
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
    /// Per shard: keyed mutations (accepted bids, purchases) in `batch`,
    /// reported to the gate once applied (see `engine::idempotency`).
    keys: Vec<u64>,
    /// The records folded into `batch`, kept to isolate a bad one.
    records: Vec<Committed>,
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
        count_keys(&c.mutations, &mut self.keys);
        self.last_seq = c.seq;
        self.oldest.get_or_insert(c.at);
        self.records.push(c);
    }

    /// Empties the batch (its records are applied).
    fn reset(&mut self) {
        self.batch.clear();
        self.keys.fill(0);
        self.records.clear();
        self.oldest = None;
        self.first_attempt = true;
        self.backoff.reset();
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
        match r {
            Ok(()) => {
                let n = self.batch.mutations;
                self.metrics.store.apply_batch.observe(n as u64);
                self.gate.applied(n, self.last_seq);
                self.gate.keys_applied_add(&self.keys);
                self.reset();
                true
            }
            Err(e) if e.is_permanent() => {
                self.metrics.store.store_errors.inc();
                tracing::error!(error = %e, "the tables refuse a batch; applying it record by record");
                self.isolate()
            }
            Err(e) => {
                self.metrics.store.store_errors.inc();
                if self.first_attempt {
                    tracing::error!(error = %e, "materializing the journal failed; retrying");
                }
                self.first_attempt = false;
                false
            }
        }
    }

    /// After a permanent error: applies the batch's records one by one and
    /// quarantines each one the tables refuse, so one bad record does not
    /// stop the tables (and, through the lag bound, every write). True when
    /// all are applied or set aside; on a transient error the rest stay
    /// for the next attempt.
    fn isolate(&mut self) -> bool {
        let records = std::mem::take(&mut self.records);
        let mut left = records.into_iter();
        while let Some(c) = left.next() {
            if let Err(e) = self.apply_or_quarantine(&c) {
                tracing::error!(error = %e, seq = c.seq, "materializing the journal failed; retrying");
                self.refold(std::iter::once(c).chain(left));
                self.first_attempt = false;
                return false;
            }
        }
        self.reset();
        true
    }

    fn apply_or_quarantine(&mut self, c: &Committed) -> Result<(), StoreError> {
        let mut one = WriteBatch::default();
        for m in &c.mutations {
            one.add(m);
        }
        one.sort_logs();
        match self.tables.apply(&one, c.seq, false) {
            Err(e) if e.is_permanent() => {
                let mut record = Vec::new();
                journal::encode(&c.mutations, &mut record);
                self.tables.quarantine(c.seq, &record, &e.to_string())?;
                self.gate.set_quarantined();
                self.metrics.store.quarantined.inc();
                tracing::error!(seq = c.seq, mutations = c.mutations.len(), error = %e,
                    "journal record quarantined: the tables refuse it (see table quarantine)");
            }
            r => r?,
        }
        self.gate.applied(c.mutations.len(), c.seq);
        // A quarantined record counts too (holding its keys in memory for
        // ever would stop the shard): the key lookups find its keys in the
        // quarantine (store::quarantined).
        let mut keys = vec![0; self.keys.len()];
        count_keys(&c.mutations, &mut keys);
        self.gate.keys_applied_add(&keys);
        Ok(())
    }

    /// Rebuilds the batch from records still to apply.
    fn refold(&mut self, records: impl Iterator<Item = Committed>) {
        self.batch.clear();
        self.keys.fill(0);
        self.oldest = None;
        self.last_seq = 0;
        for c in records {
            self.fold(c);
        }
    }
}

/// Adds each shard's tracked mutations (all of them) in `ms` to `counts`.
fn count_keys(ms: &[Mutation], counts: &mut [u64]) {
    for m in ms {
        counts[m.tracked_shard(counts.len())] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use gavel_protocol::{OpenAuctionRequest, OpenSaleRequest};

    fn purchase(order_id: u64, sold_after: u64) -> Mutation {
        Mutation::Purchase {
            sku_id: 1,
            buyer_id: 9,
            quantity: 1,
            order_id,
            sold_after,
            held_after: sold_after,
            at_ms: 1,
        }
    }

    /// A record the tables refuse (here an oversell the CHECK constraint
    /// catches; the engine never makes one) is quarantined; the records
    /// around it are applied, and the lag drains.
    #[test]
    fn a_refused_record_is_quarantined_and_the_rest_applied() {
        let dir = std::env::temp_dir().join(format!("gavel-mat-{}", rand::random::<u64>()));
        let path = dir.join("g.db");
        let path = path.to_str().unwrap();
        let tables = SqliteStore::open(path, true).unwrap();
        let gate = Arc::new(StoreGate::new(1, 1000, 1000, true));
        let (tx, thread) = spawn(
            Box::new(tables),
            gate.clone(),
            Arc::new(Metrics::new(1)),
            Duration::ZERO,
        )
        .unwrap();
        let sale = Mutation::SaleOpened {
            req: OpenSaleRequest {
                sku_id: 1,
                stock: 1,
                per_buyer_limit: 0,
                starts_at_ms: 0,
                ends_at_ms: 0,
            },
            at_ms: 1,
        };
        let auction = Mutation::AuctionOpened {
            req: OpenAuctionRequest {
                auction_id: 3,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            },
            at_ms: 1,
        };
        let records = [
            vec![sale, purchase(1, 1)],
            vec![purchase(2, 2)],
            vec![auction],
        ];
        for (i, mutations) in records.into_iter().enumerate() {
            gate.enqueue(mutations.len());
            gate.journaled(mutations.len());
            tx.send(Committed {
                seq: i as u64 + 1,
                mutations,
                at: Instant::now(),
            })
            .unwrap();
        }
        drop(tx);
        thread.join().unwrap();
        assert_eq!(gate.applied_seq(), 3);
        assert!(gate.quarantined(), "passivation must stop");
        assert_eq!(
            gate.lag(),
            0,
            "the lag drained, quarantined record included"
        );
        let mut t = SqliteStore::open(path, true).unwrap();
        assert_eq!(t.applied_seq().unwrap(), 3);
        let snap = t.load(0).unwrap();
        assert_eq!(snap.sales[0].sold, 1, "the oversell was not applied");
        assert_eq!(snap.auctions.len(), 1, "the record after it was");
        let c = rusqlite::Connection::open(path).unwrap();
        let q: (i64, String) = c
            .query_row("SELECT seq, error FROM quarantine", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(q.0, 2);
        assert!(q.1.contains("CHECK"), "{}", q.1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
