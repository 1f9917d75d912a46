//! Cross-node fan-out: a thread listens on the Redis update channel and
//! hands each update to the shard owning its auction, which pushes it to
//! this node's subscribers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use gavel_protocol::Push;

use crate::backoff::Backoff;
use crate::engine::command::{shard_of, Op};
use crate::shard::ShardMsg;

/// Starts the listener. Reconnects with backoff; exits at shutdown (it
/// holds shard queue senders, so it must, for the shards to finish).
/// Pub/sub is fire-and-forget: updates published while this listener
/// reconnects are not replayed; `live` tells the shards when it is
/// subscribed (they refuse SUBSCRIBE with UNAVAILABLE otherwise).
pub fn spawn_listener(
    url: String,
    timeout: Duration,
    shards: Vec<Sender<ShardMsg>>,
    shutdown: Arc<AtomicBool>,
    live: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gavel-redis-updates".into())
        .spawn(move || {
            let mut backoff = Backoff::new();
            while !shutdown.load(Ordering::Acquire) {
                let r = listen(&url, timeout, &shards, &shutdown, &live, &mut backoff);
                live.store(false, Ordering::Release);
                if let Err(e) = r {
                    tracing::warn!(error = %e, "redis update channel lost; resubscribing");
                    std::thread::sleep(backoff.next_delay());
                }
            }
        })?;
    Ok(())
}

/// One subscription, until it fails or the server stops.
fn listen(
    url: &str,
    timeout: Duration,
    shards: &[Sender<ShardMsg>],
    shutdown: &AtomicBool,
    live: &AtomicBool,
    backoff: &mut Backoff,
) -> Result<(), gavel_redis::RedisError> {
    // One message per shard per read, not one per update.
    let mut per_shard: Vec<Vec<Push>> = vec![Vec::new(); shards.len()];
    gavel_redis::subscribe_updates(url, timeout, |us| {
        // Called once Redis confirmed the subscription, then per read.
        live.store(true, Ordering::Release);
        backoff.reset();
        for u in us {
            let shard = shard_of(Op::GetAuction(u.auction_id()).routing_key(), shards.len());
            per_shard[shard].push(Push::from(*u));
        }
        for (tx, pushes) in shards.iter().zip(&mut per_shard) {
            if !pushes.is_empty() {
                let _ = tx.send(ShardMsg::Remote(std::mem::take(pushes)));
            }
        }
        !shutdown.load(Ordering::Acquire)
    })
}
