//! The server's wall clock. Engines never read it: the shard runner reads it
//! once per round and passes the time in, so engine tests choose the time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, server clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
