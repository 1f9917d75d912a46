//! Gavel on Redis: the `lua/` scripts (embedded), the keys they touch, and a
//! blocking client that runs a batch of operations in one pipelined round
//! trip with `EVALSHA`, on one node or on a Redis Cluster.
//!
//! Every key of one auction or SKU carries the same hash tag (`{a:42}`,
//! `{s:7}`), so each script touches a single cluster slot. Amounts and counts
//! cross the boundary as 20-digit decimal strings: the scripts never turn
//! them into Lua numbers (doubles), so values above 2^53 compare exactly.

pub mod channels;
pub mod client;
pub mod keys;
pub mod resp;
pub mod scripts;

pub use client::{Backend, RedisError, RedisGavel};
pub use scripts::{script_shas, Op, OpResult, ScriptId, Update};
