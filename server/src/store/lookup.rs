//! Lookups: a thread that reads from the tables what left a shard's memory —
//! idempotency keys, and passivated auctions — so the shard thread never
//! waits on the store.
//!
//! A shard sends a [`LookupRequest`] when its filter says a new key *may*
//! be in the store, or a command names a passivated auction; the command
//! (and later ones on the same auction or sale) waits in the shard while
//! other commands keep flowing. The answer comes back on the shard's own
//! channel as a [`LookupAnswer`]. The thread has its own connection to the
//! tables; each lookup is one primary-key read bounded by the store's
//! statement timeout. A failed lookup is answered `UNAVAILABLE` (the
//! command was not executed), a full request queue `BUSY` (by the shard,
//! without asking).

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use gavel_protocol::ErrorCode;

use std::sync::Arc;

use super::quarantined::QuarantinedKeys;
use super::{recovery, Tables};
use crate::clock::now_ms;
use crate::engine::idempotency::{Key, KeyLookup};
use crate::engine::parked::{Answer, Wanted};
use crate::metrics::Metrics;

/// Lookups waiting for the thread, across shards.
pub const QUEUE: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct LookupRequest {
    pub shard: usize,
    pub wanted: Wanted,
}

#[derive(Debug, Clone)]
pub struct LookupAnswer {
    pub wanted: Wanted,
    pub answer: Answer,
}

/// Starts the lookup thread; it ends when every request sender is gone.
/// `answers[i]` is shard `i`'s channel.
pub fn spawn(
    tables: Box<dyn Tables>,
    answers: Vec<Sender<LookupAnswer>>,
    window_ms: u64,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Sender<LookupRequest>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let t = std::thread::Builder::new()
        .name("gavel-key-lookup".into())
        .spawn(move || serve(tables, rx, answers, window_ms, metrics))?;
    Ok((tx, t))
}

fn serve(
    mut tables: Box<dyn Tables>,
    rx: Receiver<LookupRequest>,
    answers: Vec<Sender<LookupAnswer>>,
    window_ms: u64,
    metrics: Arc<Metrics>,
) {
    let mut quarantined = QuarantinedKeys::default();
    for req in rx {
        let t = Instant::now();
        let answer = match req.wanted {
            Wanted::Key(key) => lookup(&mut *tables, &mut quarantined, key, window_ms),
            Wanted::Auction(id) => read_auction(&mut *tables, id),
            Wanted::Sale(id) => read_sale(&mut *tables, id),
        };
        metrics
            .keys
            .lookup_seconds
            .observe(t.elapsed().as_micros() as u64);
        metrics.keys.count(&answer);
        let answer = LookupAnswer {
            wanted: req.wanted,
            answer,
        };
        // A shard that is gone (shutdown) needs no answer.
        let _ = answers[req.shard].send(answer);
    }
}

/// One key: found inside the window (in the log, or in a quarantined
/// record), absent (or older than the window: a retry of it may execute
/// again, as the contract allows), or failed.
fn lookup(tables: &mut dyn Tables, q: &mut QuarantinedKeys, key: Key, window_ms: u64) -> Answer {
    let found = match tables.find_key(key) {
        Ok(None) => q.find(tables, key),
        r => r,
    };
    match found {
        Ok(Some(s)) if s.at_ms().saturating_add(window_ms) > now_ms() => {
            Answer::Key(KeyLookup::Found(s))
        }
        Ok(_) => Answer::Key(KeyLookup::Absent),
        Err(e) => {
            tracing::warn!(error = %e, ?key, "idempotency key lookup failed; answering UNAVAILABLE");
            Answer::Refused(ErrorCode::Unavailable)
        }
    }
}

/// A passivated auction, as the tables hold it.
fn read_auction(tables: &mut dyn Tables, id: u64) -> Answer {
    match tables.find_auction(id) {
        Ok(row) => Answer::Auction(row.as_ref().map(recovery::auction)),
        Err(e) => {
            tracing::warn!(error = %e, auction = id, "reading a passivated auction failed; answering UNAVAILABLE");
            Answer::Refused(ErrorCode::Unavailable)
        }
    }
}

/// A passivated sale and its holdings, as the tables hold them.
fn read_sale(tables: &mut dyn Tables, id: u64) -> Answer {
    match tables.find_sale(id) {
        Ok(found) => Answer::Sale(found.map(|(row, holdings)| {
            let mut s = recovery::sale(&row);
            s.holdings.extend(holdings);
            Box::new(s)
        })),
        Err(e) => {
            tracing::warn!(error = %e, sku = id, "reading a passivated sale failed; answering UNAVAILABLE");
            Answer::Refused(ErrorCode::Unavailable)
        }
    }
}
