//! Gavel server internals, exposed as a library so tests and benchmarks can
//! reach the pieces; the binary in `main.rs` only parses flags and calls
//! [`app::run`].
//!
//! # Layout
//!
//! Dependencies point one way, top to bottom; nothing imports what imports it.
//!
//! - [`app`]: wiring. Builds everything from the [`config`], chooses the
//!   shard backend once, starts and stops the threads.
//! - [`net`]: listener, event loops, connections, buffers, TLS, auth and
//!   rate limits. Decodes requests into commands, batches them per shard.
//! - [`shard`]: one thread per shard. The [`shard::runner`] is generic over
//!   a [`shard::Backend`]: the local engine, or the Redis engine.
//! - [`cluster`]: the Redis engine — pure decisions ([`cluster::decide`])
//!   apart from the pipe, the reader thread and the update listener.
//! - [`store`]: durability — the group-commit [`store::writer`], SQLite and
//!   PostgreSQL, and recovery at start.
//! - [`engine`]: commands, effects, mutations, auctions, sales, idempotency,
//!   subscriptions and the local [`engine::state::ShardState`]. No threads,
//!   sockets or clock: everything above drives it.
//! - Leaves used across layers: [`outbox`] (how replies reach an event
//!   loop), [`metrics`] / [`metrics_http`], [`backoff`], [`clock`].
//!
//! A request's path: `net::event_loop` decodes it → `shard::runner` executes
//! it on its `Backend` → replies and mutations land in an
//! `engine::effects::Effects` → `store::writer` commits the mutations and
//! releases the replies (durable mode) → the event loop writes them out.

pub mod app;
pub mod backoff;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod metrics_http;
pub mod net;
pub mod outbox;
pub mod shard;
pub mod store;
