//! Push subscriptions: [`Subscription`] is a [`Stream`] of [`Event`]s for one
//! auction.
//!
//! # Delivery
//!
//! The connection's reader task hands each `BID_UPDATE` / `AUCTION_CLOSED`
//! push to every subscription of its auction by appending it to that
//! subscription's bounded queue; it never waits for a consumer. So a slow or
//! stalled consumer never holds up replies to other requests on the
//! connection, and the server never sees an unread socket (which would get
//! the connection dropped at its subscriber cap, PROTOCOL.md §11.5).
//!
//! # A consumer that does not keep up
//!
//! Each subscription keeps at most [`Config::push_buffer`](crate::Config::push_buffer)
//! events (default 1024). When a push arrives at a full queue, the **oldest**
//! queued event is dropped; the next poll yields [`Event::Lagged`] with the
//! number dropped, then the newer events. Memory stays bounded and the
//! consumer always reaches the freshest state; `bid_count` in the pushes (or
//! a [`Client::get_auction`](crate::Client::get_auction)) tells it exactly
//! what it missed. `AUCTION_CLOSED` is the last push of an auction, so it is
//! never the one dropped.
//!
//! # Reconnects
//!
//! Subscriptions belong to the connection on the server side. After a
//! reconnect the client subscribes again to every auction that still has a
//! live [`Subscription`], reads its state with `GET_AUCTION`, and yields
//! [`Event::Resubscribed`] with it. **Pushes sent while the connection was
//! down are lost** (the server does not replay them, PROTOCOL.md §9.3): the
//! snapshot in `Resubscribed`, and the jump in `bid_count`, are how the
//! consumer catches up. If the auction closed or disappeared meanwhile, the
//! stream yields that snapshot (state `CLOSED`, or `None`) and ends.
//!
//! The stream ends after `AUCTION_CLOSED`, or when the client shuts down.
//! Dropping a [`Subscription`] unsubscribes (when it was the last one for
//! its auction on this client).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;
use gavel_protocol::{AuctionInfo, AuctionState, Push};

use crate::client::Shared;

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A push from the server: `BID_UPDATE` or `AUCTION_CLOSED` (the last).
    Push(Push),
    /// The consumer fell behind: this many of the oldest queued events were
    /// dropped to keep the buffer bounded.
    Lagged { missed: u64 },
    /// The connection was lost and re-established, and the auction
    /// subscribed again. Pushes during the gap are lost; `auction` is its
    /// state read just after re-subscribing (`None`: the server no longer
    /// knows it). When it is `None` or `CLOSED` the stream ends after this.
    Resubscribed { auction: Option<AuctionInfo> },
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Event>,
    missed: u64,
    done: bool,
    waker: Option<Waker>,
}

/// One subscription's bounded queue, shared between the reader task
/// (producer) and the [`Subscription`] (consumer).
pub(crate) struct SubQueue {
    auction_id: u64,
    cap: usize,
    state: Mutex<QueueState>,
}

impl SubQueue {
    fn push(&self, ev: Event, last: bool) {
        let waker = {
            let mut s = self.state.lock().unwrap();
            if s.done {
                return;
            }
            if s.events.len() >= self.cap {
                s.events.pop_front();
                s.missed += 1;
            }
            s.events.push_back(ev);
            s.done = last;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn finish(&self) {
        let waker = {
            let mut s = self.state.lock().unwrap();
            s.done = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut s = self.state.lock().unwrap();
        if s.missed > 0 {
            let missed = std::mem::take(&mut s.missed);
            return Poll::Ready(Some(Event::Lagged { missed }));
        }
        if let Some(ev) = s.events.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if s.done {
            return Poll::Ready(None);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Every live subscription of one client, by auction. Survives reconnects.
#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<u64, Vec<Arc<SubQueue>>>>,
}

impl Registry {
    pub(crate) fn add(&self, auction_id: u64, cap: usize) -> Arc<SubQueue> {
        let q = Arc::new(SubQueue {
            auction_id,
            cap,
            state: Mutex::new(QueueState::default()),
        });
        self.map
            .lock()
            .unwrap()
            .entry(auction_id)
            .or_default()
            .push(q.clone());
        q
    }

    /// Removes `q`; true when it was the last subscription of its auction.
    fn remove(&self, q: &Arc<SubQueue>) -> bool {
        let mut map = self.map.lock().unwrap();
        let Some(list) = map.get_mut(&q.auction_id) else {
            return false;
        };
        let before = list.len();
        list.retain(|x| !Arc::ptr_eq(x, q));
        let removed = list.len() < before;
        if list.is_empty() {
            map.remove(&q.auction_id);
        }
        removed && !map.contains_key(&q.auction_id)
    }

    /// Hands a push to every subscription of its auction (never blocks).
    pub(crate) fn deliver(&self, push: Push) {
        let last = matches!(push, Push::AuctionClosed { .. });
        let queues = {
            let mut map = self.map.lock().unwrap();
            if last {
                // The server ends the subscription with this push.
                map.remove(&push.auction_id())
            } else {
                map.get(&push.auction_id()).cloned()
            }
        };
        for q in queues.into_iter().flatten() {
            q.push(Event::Push(push), last);
        }
    }

    /// Auctions with at least one live subscription.
    pub(crate) fn auctions(&self) -> Vec<u64> {
        self.map.lock().unwrap().keys().copied().collect()
    }

    /// After a re-subscribe: tells the auction's subscribers where things
    /// stand, and ends their streams if the auction is over or gone.
    pub(crate) fn resubscribed(&self, auction_id: u64, auction: Option<AuctionInfo>) {
        let over = auction.is_none_or(|a| a.state == AuctionState::Closed);
        let queues = {
            let mut map = self.map.lock().unwrap();
            if over {
                map.remove(&auction_id)
            } else {
                map.get(&auction_id).cloned()
            }
        };
        for q in queues.into_iter().flatten() {
            q.push(Event::Resubscribed { auction }, over);
        }
    }

    /// Ends every stream (the client shut down).
    pub(crate) fn finish_all(&self) {
        let all: Vec<_> = self.map.lock().unwrap().drain().collect();
        for q in all.into_iter().flat_map(|(_, v)| v) {
            q.finish();
        }
    }
}

/// A stream of [`Event`]s for one auction; see the [module docs](self) for
/// buffering and reconnects. Created by [`Client::subscribe`](crate::Client::subscribe).
pub struct Subscription {
    queue: Arc<SubQueue>,
    shared: Arc<Shared>,
    /// False for a subscription the server refused: dropping it must not
    /// send UNSUBSCRIBE.
    pub(crate) active: bool,
}

impl Subscription {
    pub(crate) fn new(queue: Arc<SubQueue>, shared: Arc<Shared>) -> Subscription {
        Subscription {
            queue,
            shared,
            active: true,
        }
    }

    /// The auction this subscription follows.
    pub fn auction_id(&self) -> u64 {
        self.queue.auction_id
    }

    /// Events queued and not yet taken.
    pub fn queued(&self) -> usize {
        self.queue.state.lock().unwrap().events.len()
    }

    /// The next event; `None` once the stream has ended. The same as
    /// `StreamExt::next`, without needing the trait.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.queue.poll(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.queue.poll(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("auction_id", &self.queue.auction_id)
            .field("queued", &self.queued())
            .finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = self.shared.subs.remove(&self.queue);
        if last && self.active {
            self.shared.unsubscribe_in_background(self.queue.auction_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(n: u64) -> Push {
        Push::BidUpdate {
            auction_id: 1,
            high_bid: n * 10,
            high_bidder: 7,
            bid_count: n,
        }
    }

    fn poll(q: &SubQueue) -> Poll<Option<Event>> {
        let w = Waker::noop();
        q.poll(&mut Context::from_waker(w))
    }

    #[test]
    fn full_queue_drops_the_oldest_and_reports_it() {
        let reg = Registry::default();
        let q = reg.add(1, 3);
        for n in 1..=10 {
            reg.deliver(update(n));
        }
        assert_eq!(poll(&q), Poll::Ready(Some(Event::Lagged { missed: 7 })));
        for n in 8..=10 {
            assert_eq!(poll(&q), Poll::Ready(Some(Event::Push(update(n)))));
        }
        assert_eq!(poll(&q), Poll::Pending);
        let closed = Push::AuctionClosed {
            auction_id: 1,
            winning_bid: 100,
            winner: 7,
        };
        reg.deliver(closed);
        reg.deliver(update(11)); // nobody is subscribed any more
        assert_eq!(poll(&q), Poll::Ready(Some(Event::Push(closed))));
        assert_eq!(poll(&q), Poll::Ready(None));
        assert!(reg.auctions().is_empty());
    }
}
