//! An event loop's outbox: the channel shards and the store writer send its
//! replies on, and the waker of its poll. Sits below the shards, the writer
//! and the event loops, which all hold one.
//!
//! # Bounded, and why that cannot deadlock
//!
//! The channel holds at most `--reply-queue` batches, each of at most
//! [`MAX_BATCH`] replies (a larger shard round is split), so what waits for
//! one event loop is bounded: with the defaults, 256 × 1,024 replies of
//! ~88 bytes, about 23 MB. A shard (or the writer) that finds it full
//! wakes the loop and waits for room; meanwhile its own queue fills and the
//! event loops answer new requests for it `BUSY` — back-pressure instead of
//! memory.
//!
//! Waiting here cannot deadlock, because an event loop never waits for a
//! shard or the writer: it hands commands to shards on queues that never
//! block (their depth is bounded by admission, `ShardHandle::queued`, not by
//! the channel), disconnect notices likewise, and the only place it sleeps
//! is `poll(2)`, which the waker interrupts. So the loop always comes back
//! to drain its replies, and every sender waiting on it gets room. A loop
//! drains at most what was queued when it started a turn, so senders that
//! refill the channel meanwhile cannot keep it from reading sockets. Once a
//! loop has exited its receiver is gone and a send fails at once (nothing
//! to tell a closed connection).

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use prometheus_client::metrics::counter::Counter;

use crate::engine::command::Outgoing;

/// Most replies in one batch on the channel; a shard round with more for
/// one loop is sent as several batches.
pub const MAX_BATCH: usize = 1024;

/// Where an event loop's replies go: its channel and the waker of its poll.
#[derive(Clone)]
pub struct LoopHandle {
    pub replies: Sender<Vec<Outgoing>>,
    pub waker: Arc<mio::Waker>,
    /// Counts the times a sender found the channel full and waited.
    pub full: Counter,
}

/// An event loop's reply channel holding at most `batches` batches.
pub fn channel(
    batches: usize,
    waker: Arc<mio::Waker>,
    full: Counter,
) -> (LoopHandle, Receiver<Vec<Outgoing>>) {
    let (tx, rx) = crossbeam_channel::bounded(batches.max(1));
    let handle = LoopHandle {
        replies: tx,
        waker,
        full,
    };
    (handle, rx)
}

impl LoopHandle {
    /// Hands a batch of replies to the loop and wakes it; waits while the
    /// loop's channel is full (see the module doc for why that is safe).
    pub fn deliver(&self, mut batch: Vec<Outgoing>) {
        while batch.len() > MAX_BATCH {
            let rest = batch.split_off(MAX_BATCH);
            self.send(batch);
            batch = rest;
        }
        if !batch.is_empty() {
            self.send(batch);
        }
    }

    fn send(&self, batch: Vec<Outgoing>) {
        let sent = match self.replies.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(batch)) => {
                self.full.inc();
                // Make sure the loop is on its way to drain, then wait.
                let _ = self.waker.wake();
                self.replies.send(batch).is_ok()
            }
            // A loop that has exited has closed its connections: nothing to tell.
            Err(TrySendError::Disconnected(_)) => false,
        };
        if sent {
            let _ = self.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::command::Reply;
    use gavel_protocol::Push;
    use std::time::Duration;

    fn push(n: usize) -> Vec<Outgoing> {
        let o = Outgoing {
            slot: 0,
            gen: 1,
            t0_us: 0,
            kind: 0,
            subs: 0,
            reply: Reply::Push(Push::AuctionClosed {
                auction_id: 1,
                winning_bid: 0,
                winner: 0,
            }),
        };
        vec![o; n]
    }

    #[test]
    fn a_full_channel_makes_the_sender_wait_and_big_rounds_are_split() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let full = Counter::default();
        let (h, rx) = channel(2, waker, full.clone());
        // One round of 2.5 batches' worth: two fit, the third waits.
        let sender = {
            let h = h.clone();
            std::thread::spawn(move || h.deliver(push(MAX_BATCH * 2 + MAX_BATCH / 2)))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(rx.len(), 2, "bounded: the rest waits with the sender");
        assert!(!sender.is_finished());
        assert_eq!(full.get(), 1);
        let sizes: Vec<usize> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap().len())
            .collect();
        assert_eq!(sizes, vec![MAX_BATCH, MAX_BATCH, MAX_BATCH / 2]);
        sender.join().unwrap();
        // A loop that is gone: delivering returns at once.
        drop(rx);
        h.deliver(push(3 * MAX_BATCH));
    }
}
