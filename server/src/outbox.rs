//! An event loop's outbox: the channel shards and the store writer send its
//! replies on, and the waker of its poll. Sits below the shards, the writer
//! and the event loops, which all hold one.

use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::engine::command::Outgoing;

/// Where an event loop's replies go: its channel and the waker of its poll.
#[derive(Clone)]
pub struct LoopHandle {
    pub replies: Sender<Vec<Outgoing>>,
    pub waker: Arc<mio::Waker>,
}

impl LoopHandle {
    /// Hands a batch of replies to the loop and wakes it once.
    pub fn deliver(&self, batch: Vec<Outgoing>) {
        if batch.is_empty() {
            return;
        }
        // A loop that has exited has closed its connections: nothing to tell.
        if self.replies.send(batch).is_ok() {
            let _ = self.waker.wake();
        }
    }
}
