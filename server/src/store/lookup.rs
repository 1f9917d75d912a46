//! Key lookups: a thread that asks the tables about idempotency keys that
//! left a shard's memory, so the shard thread never waits on the store.
//!
//! A shard sends a [`LookupRequest`] when its filter says a new key *may*
//! be in the store; the command (and later ones on the same auction or sale)
//! waits in the shard while other commands keep flowing. The answer comes
//! back on the shard's own channel as a [`LookupAnswer`]. The thread has
//! its own connection to the tables; each lookup is one primary-key read
//! bounded by the store's statement timeout. A failed lookup is answered
//! `UNAVAILABLE` (the command was not executed), a full request queue
//! `BUSY` (by the shard, without asking).

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use gavel_protocol::ErrorCode;

use super::Tables;
use crate::clock::now_ms;
use crate::engine::idempotency::{Key, KeyLookup};
use crate::metrics::Metrics;
use std::sync::Arc;

/// Lookups waiting for the thread, across shards.
pub const QUEUE: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct LookupRequest {
    pub shard: usize,
    pub key: Key,
}

#[derive(Debug, Clone, Copy)]
pub struct LookupAnswer {
    pub key: Key,
    pub result: KeyLookup,
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
    for req in rx {
        let t = Instant::now();
        let result = lookup(&mut *tables, req.key, window_ms);
        metrics
            .keys
            .lookup_seconds
            .observe(t.elapsed().as_micros() as u64);
        metrics.keys.count(result);
        let answer = LookupAnswer {
            key: req.key,
            result,
        };
        // A shard that is gone (shutdown) needs no answer.
        let _ = answers[req.shard].send(answer);
    }
}

/// One key: found inside the window, absent (or older than the window: a
/// retry of it may execute again, as the contract allows), or failed.
fn lookup(tables: &mut dyn Tables, key: Key, window_ms: u64) -> KeyLookup {
    match tables.find_key(key) {
        Ok(Some(s)) if s.at_ms().saturating_add(window_ms) > now_ms() => KeyLookup::Found(s),
        Ok(_) => KeyLookup::Absent,
        Err(e) => {
            tracing::warn!(error = %e, ?key, "idempotency key lookup failed; answering UNAVAILABLE");
            KeyLookup::Refused(ErrorCode::Unavailable)
        }
    }
}
