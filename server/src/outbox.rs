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
//!
//! # Waking the loop only when it sleeps
//!
//! A sender writes the loop's eventfd ([`mio::Waker::wake`]) only when the
//! loop is in, or about to enter, `poll(2)`: the loop raises `sleeping`
//! before it polls and lowers it after ([`Inbox::poll`]), and a sender that
//! queued a batch wakes only if it finds the flag up, swapping it down so
//! that of several senders one pays the syscall. A loop that is busy picks
//! the batch up at the end of its turn, when it looks at the channel one
//! last time before sleeping. Under load the loop is rarely asleep, so
//! most rounds cost no syscall (before, every round wrote the eventfd).
//! Why no wake-up is lost: see [`Inbox::poll`] and [`LoopHandle::send`].

use std::io;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use prometheus_client::metrics::counter::Counter;

use crate::engine::command::Outgoing;

/// Most replies in one batch on the channel; a shard round with more for
/// one loop is sent as several batches.
pub const MAX_BATCH: usize = 1024;

/// Where an event loop's replies go: its channel and the waker of its poll.
#[derive(Clone)]
pub struct LoopHandle {
    /// Private: every send must go through `send`, which wakes the loop.
    replies: Sender<Vec<Outgoing>>,
    /// Wakes the loop's poll. [`LoopHandle::deliver`] uses it only when the
    /// loop sleeps; anyone else (the signal thread) may wake it at any time.
    pub waker: Arc<mio::Waker>,
    /// Up while the loop is in (or about to enter) `poll`; see [`Inbox::poll`].
    sleeping: Arc<AtomicBool>,
    /// Counts the times a sender found the channel full and waited.
    pub full: Counter,
}

/// The event loop's end of its outbox: the receiver, and the flag that
/// tells senders whether the loop must be woken.
pub struct Inbox {
    replies: Receiver<Vec<Outgoing>>,
    sleeping: Arc<AtomicBool>,
}

/// An event loop's reply channel holding at most `batches` batches.
pub fn channel(batches: usize, waker: Arc<mio::Waker>, full: Counter) -> (LoopHandle, Inbox) {
    let (tx, rx) = crossbeam_channel::bounded(batches.max(1));
    let sleeping = Arc::new(AtomicBool::new(false));
    let handle = LoopHandle {
        replies: tx,
        waker,
        sleeping: sleeping.clone(),
        full,
    };
    (
        handle,
        Inbox {
            replies: rx,
            sleeping,
        },
    )
}

impl LoopHandle {
    /// Hands a batch of replies to the loop, waking it if it sleeps; waits
    /// while the loop's channel is full (see the module doc for why that is
    /// safe).
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
                // Make sure the loop is on its way to drain, then wait. A
                // full channel means the loop is awake or being woken (it
                // never sleeps on a non-empty channel), so this wake is
                // belt and braces, and rare: the counter above counts it.
                let _ = self.waker.wake();
                self.replies.send(batch).is_ok()
            }
            // A loop that has exited has closed its connections: nothing to tell.
            Err(TrySendError::Disconnected(_)) => false,
        };
        if sent {
            self.wake_if_sleeping();
        }
    }

    /// Called after a batch was queued. Pairs with [`Inbox::poll`]: this
    /// thread *writes the channel, then reads the flag*; the loop *writes
    /// the flag, then reads the channel*. With a SeqCst fence between the
    /// write and the read on each side, the two fences are ordered one way
    /// or the other: if the loop's comes first, our read of the flag sees
    /// it up (or lowered by a later writer: the loop, awake, or another
    /// sender, who wakes it); if ours comes first, the loop's read of the
    /// channel sees our batch and it does not sleep. Without the fences
    /// (plain Release/Acquire, or x86's store buffer) both reads could see
    /// the old values: the loop would sleep with our batch queued and no
    /// wake coming, up to its poll timeout.
    fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        // Load first: the common case (loop awake) stays a shared read
        // instead of taking the cache line exclusive for a swap.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::Relaxed) {
            let _ = self.waker.wake();
        }
    }
}

impl Inbox {
    /// Polls for events, sleeping at most `timeout` — or not at all when
    /// replies are already waiting. Every sleep of the loop goes through
    /// here: senders wake it only while it is inside this call (see
    /// [`LoopHandle::wake_if_sleeping`] for the other half of the protocol).
    pub fn poll(
        &self,
        poll: &mut mio::Poll,
        events: &mut mio::Events,
        timeout: Duration,
    ) -> io::Result<()> {
        // Raise the flag, then look at the channel one last time: a batch
        // queued before our fence is seen here; one queued after it finds
        // the flag up and wakes us (the eventfd stays readable until the
        // poll below, so a wake that lands before it still ends it).
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let timeout = if self.replies.is_empty() {
            timeout
        } else {
            // Not sleeping after all: spare senders a needless wake.
            self.sleeping.store(false, Ordering::Relaxed);
            Duration::ZERO
        };
        let res = poll.poll(events, Some(timeout));
        // Awake: senders need not wake us until we come back. A wake that
        // a sender is about to make after swapping the flag down just ends
        // our next poll early (one spare turn, no lost reply).
        self.sleeping.store(false, Ordering::Relaxed);
        res
    }

    /// Batches queued now.
    pub fn len(&self) -> usize {
        self.replies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    pub fn try_recv(&self) -> Result<Vec<Outgoing>, TryRecvError> {
        self.replies.try_recv()
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

    const WAKER: mio::Token = mio::Token(1);

    fn setup(batches: usize) -> (mio::Poll, LoopHandle, Inbox, Counter) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).unwrap());
        let full = Counter::default();
        let (h, inbox) = channel(batches, waker, full.clone());
        (poll, h, inbox, full)
    }

    /// Drains the inbox the way the event loop does; returns replies seen.
    fn drain(inbox: &Inbox) -> usize {
        let mut n = 0;
        for _ in 0..inbox.len() {
            n += inbox.try_recv().unwrap().len();
        }
        n
    }

    #[test]
    fn an_awake_loop_is_not_woken_and_a_sleeping_one_is() {
        let (mut poll, h, inbox, _) = setup(8);
        let mut events = mio::Events::with_capacity(8);
        // Awake (not in poll): the delivery writes no eventfd.
        h.deliver(push(3));
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty(), "woke a loop that was awake");
        // Replies waiting: Inbox::poll does not sleep (a lost wake-up
        // would otherwise hold them for the whole timeout).
        let t = std::time::Instant::now();
        inbox
            .poll(&mut poll, &mut events, Duration::from_secs(60))
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(60));
        assert!(events.is_empty());
        assert_eq!(drain(&inbox), 3);
        // Asleep: the delivery, made once the loop is inside poll, wakes it.
        // (The sender's handle is a clone: the last handle dropped closes
        // the eventfd, and epoll forgets the events of a closed fd.)
        let sleeping = inbox.sleeping.clone();
        let h2 = h.clone();
        let sender = std::thread::spawn(move || {
            while !sleeping.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            h2.deliver(push(2));
        });
        inbox
            .poll(&mut poll, &mut events, Duration::from_secs(60))
            .unwrap();
        sender.join().unwrap();
        assert!(
            events.iter().any(|e| e.token() == WAKER),
            "a sleeping loop was not woken"
        );
        assert!(!inbox.sleeping.load(Ordering::SeqCst));
        assert_eq!(drain(&inbox), 2);
    }

    /// A pause of 0–1,023 spins drawn from a xorshift state.
    fn spin(x: &mut u64) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        for _ in 0..(*x & 1023) {
            std::hint::spin_loop();
        }
    }

    /// The lost-wake-up race. Each round starts when the loop has seen
    /// every batch of the last; every sender then queues one batch at a
    /// random moment while the loop finishes its turn (drain, then more
    /// work, as dispatch and flush are) and goes to sleep. So the last batch of a round
    /// has no later delivery to rescue it: if its wake-up is lost the loop
    /// sleeps until its timeout with it queued, which fails the test
    /// (instead of hanging it). Breaking the protocol (no last look at the
    /// channel before sleeping) fails this within a few rounds.
    #[test]
    fn deliveries_racing_a_loop_going_to_sleep_are_never_lost() {
        const SENDERS: usize = 3;
        const ROUNDS: usize = 2_000;
        const TIMEOUT: Duration = Duration::from_secs(20);
        let total = SENDERS * ROUNDS;
        // Room for everything: a full channel would wake the loop
        // unconditionally and hide a lost wake-up.
        let (mut poll, h, inbox, full) = setup(total);
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let (h, seen) = (h.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (s as u64 + 1);
                    for r in 0..ROUNDS {
                        // The round starts when the loop has seen the last.
                        let mut n = 0u32;
                        while seen.load(Ordering::Acquire) < r * SENDERS {
                            n += 1;
                            if n.is_multiple_of(64) {
                                std::thread::yield_now(); // 2 cores, 4 threads
                            }
                            std::hint::spin_loop();
                        }
                        spin(&mut x);
                        h.deliver(push(1));
                    }
                })
            })
            .collect();
        // `h` stays alive: dropping the last handle closes the eventfd.
        let mut events = mio::Events::with_capacity(8);
        let (mut x, mut got, mut woken) = (0x2545_F491_4F6C_DD1Du64, 0, 0);
        while got < total {
            let t = std::time::Instant::now();
            inbox.poll(&mut poll, &mut events, TIMEOUT).unwrap();
            let queued = inbox.len();
            assert!(
                t.elapsed() < TIMEOUT || queued == 0,
                "lost wake-up: the loop slept {TIMEOUT:?} with {queued} batches queued \
                 ({got} of {total} seen)"
            );
            woken += events.iter().filter(|e| e.token() == WAKER).count();
            got += drain(&inbox);
            seen.store(got, Ordering::Release);
            // The rest of the turn: senders of the next round deliver now
            // (no wake: the loop is awake) or once it sleeps.
            spin(&mut x);
            spin(&mut x);
        }
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(got, total);
        assert_eq!(full.get(), 0);
        assert!(
            woken > 0,
            "the loop never slept: the race was not exercised"
        );
        eprintln!("{total} deliveries, {woken} wake-ups");
    }

    #[test]
    fn a_full_channel_makes_the_sender_wait_and_the_loop_drain() {
        let (mut poll, h, inbox, full) = setup(2);
        let mut events = mio::Events::with_capacity(8);
        // One round of 2.5 batches' worth: two fit, the third waits.
        let sender = {
            let h = h.clone();
            std::thread::spawn(move || h.deliver(push(MAX_BATCH * 2 + MAX_BATCH / 2)))
        };
        while full.get() == 0 {
            std::thread::yield_now();
        }
        assert_eq!(inbox.len(), 2, "bounded: the rest waits with the sender");
        assert!(!sender.is_finished());
        // The loop drains as it would: poll (no sleep: replies wait), take
        // what is queued, poll again (woken, or the last batch is queued).
        let mut sizes = Vec::new();
        while sizes.len() < 3 {
            inbox
                .poll(&mut poll, &mut events, Duration::from_secs(60))
                .unwrap();
            for _ in 0..inbox.len() {
                sizes.push(inbox.try_recv().unwrap().len());
            }
        }
        assert_eq!(sizes, vec![MAX_BATCH, MAX_BATCH, MAX_BATCH / 2]);
        assert_eq!(full.get(), 1);
        sender.join().unwrap();
        // A loop that is gone: delivering returns at once.
        drop(inbox);
        h.deliver(push(3 * MAX_BATCH));
    }
}
