//! [`Pool`]: a few [`Client`]s (one connection each) to spread load.
//!
//! One multiplexed connection already pipelines any number of requests, so a
//! pool is for spreading work over the server's event-loop threads
//! (`--io-threads`) and over several sockets' buffers, not for concurrency
//! as such. [`Pool::get`] picks the connected client with the fewest
//! requests in flight; [`Pool::for_key`] always picks the same client for a
//! key. Use the latter for an auction or SKU whose requests must be answered
//! in the order sent: the server orders replies per auction *per connection*
//! only (PROTOCOL.md §8).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::client::{load, Client};
use crate::config::Config;
use crate::error::Error;

/// A fixed set of [`Client`]s to the same server.
#[derive(Debug, Clone)]
pub struct Pool {
    clients: Vec<Client>,
}

static START: AtomicUsize = AtomicUsize::new(0);

impl Pool {
    /// Opens `size` (at least 1) connections with `cfg`, concurrently; fails
    /// if any of them fails.
    pub async fn connect(cfg: Config, size: usize) -> Result<Pool, Error> {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..size.max(1) {
            let cfg = cfg.clone();
            set.spawn(async move { (i, Client::connect(cfg).await) });
        }
        let mut clients = Vec::with_capacity(size.max(1));
        while let Some(r) = set.join_next().await {
            let (i, c) = r.map_err(|e| Error::Unexpected(format!("connect task: {e}")))?;
            clients.push((i, c?));
        }
        clients.sort_by_key(|(i, _)| *i);
        Ok(Pool {
            clients: clients.into_iter().map(|(_, c)| c).collect(),
        })
    }

    /// The connected client with the fewest requests in flight (a
    /// disconnected one only if none is connected). Ties are broken by a
    /// rotating start, so an idle pool is used round-robin.
    pub fn get(&self) -> &Client {
        let n = self.clients.len();
        let start = START.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = (false, usize::MAX);
        for k in 0..n {
            let i = (start + k) % n;
            let (up, in_flight) = load(&self.clients[i]);
            let better = match (up, best_load.0) {
                (true, false) => true,
                (false, true) => false,
                _ => in_flight < best_load.1,
            };
            if better {
                best = i;
                best_load = (up, in_flight);
            }
        }
        &self.clients[best]
    }

    /// The client for `key` (an auction or SKU id): always the same one.
    pub fn for_key(&self, key: u64) -> &Client {
        // Fibonacci hashing spreads sequential ids.
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.clients[(h % self.clients.len() as u64) as usize]
    }

    /// All clients, in connection order.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}
