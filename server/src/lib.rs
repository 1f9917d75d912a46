//! Gavel server internals, exposed as a library so tests and benchmarks can
//! reach the pieces; the binary in `main.rs` wires them together.

pub mod auction;
pub mod auth;
pub mod batch_writer;
pub mod buffer_pool;
pub mod command;
pub mod config;
pub mod connection;
pub mod event_loop;
pub mod idempotency;
pub mod listener;
pub mod metrics;
pub mod metrics_http;
pub mod mutation;
pub mod rate_limit;
pub mod redis_backend;
pub mod sale;
pub mod shard;
pub mod store;
pub mod tls;
