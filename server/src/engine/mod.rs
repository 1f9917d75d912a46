//! The engine: what a shard decides, as plain data and pure state machines —
//! no threads, sockets or clock (the time comes in as an argument).
//!
//! - [`command`]: requests in ([`command::Command`], [`command::Op`]) and
//!   replies out ([`command::Outgoing`]), and which shard owns a key.
//! - [`effects`]: what a round produces (replies per event loop, mutations).
//! - [`mutation`]: one state change, as the store persists it.
//! - [`auction`], [`sale`]: one auction's and one sale's rules.
//! - [`auction_table`]: a shard's auctions by id, one cache line each.
//! - [`idempotency`]: remembered outcomes of keyed requests.
//! - [`key_table`]: the compact hash table the keys live in.
//! - [`spilled_keys`]: the filter of accepted keys that left memory for the store.
//! - [`parked`]: commands waiting for a lookup in the store (a key, an auction).
//! - [`passivated`]: closed auctions that left memory.
//! - [`subscriptions`]: who watches which auction.
//! - [`limits`]: the caps on what a shard holds, and what it holds.
//! - [`state`]: [`state::ShardState`], the local engine tying them together.

pub mod auction;
pub mod auction_table;
pub mod command;
pub mod effects;
pub mod idempotency;
pub mod key_table;
pub mod limits;
pub mod mutation;
pub mod parked;
pub mod passivated;
pub mod sale;
pub mod spilled_keys;
pub mod state;
pub mod subscriptions;
