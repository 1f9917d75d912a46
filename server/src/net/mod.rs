//! The network side: accepting connections, reading frames, answering.
//!
//! - [`listener`]: the socket2 listener (backlog, options).
//! - [`event_loop`]: one mio loop per I/O thread; decodes requests, admits
//!   them (auth, rate limits, in-flight caps), batches them per shard per
//!   turn and writes the shards' replies back.
//! - [`connection`]: one connection's buffers and TLS state.
//! - [`buffer_pool`]: pooled read/write buffers.
//! - [`tls`], [`auth`], [`rate_limit`]: what a connection must pass.
//! - [`log_limit`]: at most a line and a summary per interval for the log
//!   lines clients can cause by the thousand.

pub mod auth;
pub mod buffer_pool;
pub mod connection;
pub mod event_loop;
pub mod listener;
pub mod log_limit;
pub mod rate_limit;
pub mod tls;
