//! Cross-node mode: shards whose auctions and sales live in Redis.
//!
//! Each shard round becomes one pipelined round trip of Lua scripts (see
//! `lua/` and the `gavel-redis` crate). The shard keeps only what makes it
//! fast and local: what it knows of each auction (high bid, end, closed; fed
//! by replies and by the update channel) to answer `OUTBID` without asking
//! Redis for a bid that cannot win, and the subscriptions of this node's
//! connections, fed by Redis pub/sub so a subscriber here sees bids accepted
//! on any node. While Redis is unreachable, requests that need it are
//! answered `UNAVAILABLE` (never `OK` without Redis's answer) and the shard
//! reconnects with exponential backoff and jitter.
//!
//! - [`decide`]: the decisions, with no socket (unit-tested by hand).
//! - [`engine`]: [`engine::RedisShard`], the shard [`crate::shard::Backend`]:
//!   connections, rounds in flight, reconnects.
//! - [`pipe`]: the pipelined connection's reader thread.
//! - [`updates`]: the listener on the per-auction update channels this
//!   node's subscribers need, feeding the shards.

pub mod decide;
pub mod engine;
pub mod pipe;
pub mod updates;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub urls: Vec<String>,
    pub cluster: bool,
    pub timeout: Duration,
    pub idempotency_window: Duration,
    /// Answer OUTBID locally for bids below the known high bid.
    pub outbid_filter: bool,
    /// Whether this node's update listener holds any master's channels.
    pub updates_live: Arc<AtomicBool>,
    /// This shard's share of `--max-subscriptions`.
    pub max_subscriptions: usize,
    /// Where the shard asks for update channels (the node's listener).
    pub listener: crossbeam_channel::Sender<updates::Ctl>,
    /// The shard's event channel: its pipelined connections' replies and
    /// the listener's news of its channels.
    pub events: (
        crossbeam_channel::Sender<pipe::RedisEvent>,
        crossbeam_channel::Receiver<pipe::RedisEvent>,
    ),
}
