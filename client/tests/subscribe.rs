//! Push streams: order and end, a slow subscriber (never holds up the
//! connection; bounded buffer, oldest dropped and reported), and renewal
//! after a reconnect (pushes during the gap are lost; a snapshot says where
//! things stand).

mod common;

use std::time::{Duration, Instant};

use common::{temp_dir, Server};
use gavel_client::{Backoff, Client, Config, Event};
use gavel_protocol::{AuctionState, BidRequest, OpenAuctionRequest, Push};

fn open(id: u64) -> OpenAuctionRequest {
    OpenAuctionRequest {
        auction_id: id,
        reserve: 0,
        min_increment: 1,
        ends_at_ms: 0,
    }
}

fn bid(auction_id: u64, bidder_id: u64, amount: u64) -> BidRequest {
    BidRequest {
        auction_id,
        bidder_id,
        amount,
        bid_id: amount,
    }
}

async fn next(sub: &mut gavel_client::Subscription) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("an event within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_arrive_in_order_and_end_with_the_close() {
    let server = Server::start(&[]);
    let watcher = Client::connect_to(server.addr.to_string()).await.unwrap();
    let bidder = Client::connect_to(server.addr.to_string()).await.unwrap();
    bidder.open_auction(open(1)).await.unwrap();
    let mut sub = watcher.subscribe(1).await.unwrap();
    // A second subscription to the same auction on the same client gets
    // its own copy of every push.
    let mut sub2 = watcher.subscribe(1).await.unwrap();
    for n in 1..=10 {
        assert!(bidder.bid(bid(1, 7, n * 10)).await.unwrap().is_ok());
    }
    for s in [&mut sub, &mut sub2] {
        for n in 1..=10 {
            let ev = next(s).await.unwrap();
            assert_eq!(
                ev,
                Event::Push(Push::BidUpdate {
                    auction_id: 1,
                    high_bid: n * 10,
                    high_bidder: 7,
                    bid_count: n,
                })
            );
        }
    }
    let closed = bidder.close_auction(1).await.unwrap();
    assert_eq!((closed.result.value, closed.result.aux), (100, 7));
    for s in [&mut sub, &mut sub2] {
        assert_eq!(
            next(s).await,
            Some(Event::Push(Push::AuctionClosed {
                auction_id: 1,
                winning_bid: 100,
                winner: 7,
            }))
        );
        assert_eq!(next(s).await, None, "the stream ends after AUCTION_CLOSED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_does_not_block_the_connection_and_stays_bounded() {
    const CAP: usize = 32;
    const BIDS: u64 = 3_000;
    let server = Server::start(&[]);
    let client = Client::connect(Config::new(server.addr.to_string()).push_buffer(CAP))
        .await
        .unwrap();
    client.open_auction(open(1)).await.unwrap();
    // Subscribed on the same connection the bids go over, and never read
    // while they do.
    let mut sub = client.subscribe(1).await.unwrap();

    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..10u64 {
        let c = client.clone();
        set.spawn(async move {
            let mut ok = 0u64;
            for i in 0..BIDS / 10 {
                // Amounts rise over time across tasks; some are outbid.
                let amount = 1 + i * 10 + t;
                if c.bid(bid(1, t + 1, amount)).await.unwrap().is_ok() {
                    ok += 1;
                }
            }
            ok
        });
    }
    let mut accepted = 0;
    while let Some(r) = set.join_next().await {
        accepted += r.unwrap();
    }
    // Replies kept flowing although nobody consumed a push.
    let ping = Instant::now();
    client.ping("still responsive").await.unwrap();
    assert!(ping.elapsed() < Duration::from_secs(1));
    eprintln!(
        "{BIDS} bids ({accepted} accepted) in {:?} with an unread subscription",
        started.elapsed()
    );
    assert!(client.is_connected() && client.reconnects() == 0);

    // Give the last pushes time to land, then look: bounded, oldest dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.queued(), CAP);
    let missed = match next(&mut sub).await.unwrap() {
        Event::Lagged { missed } => missed,
        e => panic!("expected Lagged first, got {e:?}"),
    };
    assert_eq!(missed, accepted - CAP as u64);
    // What is left are the newest pushes, in order, bid_count without gaps.
    for k in 0..CAP as u64 {
        match next(&mut sub).await.unwrap() {
            Event::Push(Push::BidUpdate { bid_count, .. }) => {
                assert_eq!(bid_count, missed + 1 + k)
            }
            e => panic!("{e:?}"),
        }
    }
    let info = client.get_auction(1).await.unwrap().unwrap();
    assert_eq!(info.bid_count, accepted);
    // A consumer that catches up gets new pushes as usual.
    let high = info.high_bid;
    client.bid(bid(1, 99, high + 1)).await.unwrap();
    assert!(matches!(
        next(&mut sub).await,
        Some(Event::Push(Push::BidUpdate {
            high_bidder: 99,
            ..
        }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_is_renewed_after_a_reconnect() {
    let dir = temp_dir("resub");
    let store = format!("sqlite:{}/g.db", dir.display());
    let mut server = Server::start(&["--store", &store]);
    let cfg = Config::new(server.addr.to_string()).reconnect_backoff(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
    });
    let client = Client::connect(cfg.clone()).await.unwrap();
    client.open_auction(open(1)).await.unwrap();
    client.open_auction(open(2)).await.unwrap();
    let mut sub = client.subscribe(1).await.unwrap();
    let mut gone = client.subscribe(2).await.unwrap();
    for n in 1..=3 {
        client.bid(bid(1, 7, n)).await.unwrap();
    }
    for n in 1..=3 {
        assert!(matches!(
            next(&mut sub).await,
            Some(Event::Push(Push::BidUpdate { bid_count, .. })) if bid_count == n
        ));
    }

    tokio::task::block_in_place(|| server.restart_kill9());
    // Bids while our connection is being re-established, from another
    // client: their pushes may be lost to us, the snapshot shows them.
    let other = Client::connect(cfg).await.unwrap();
    other.bid(bid(1, 8, 10)).await.unwrap();
    other.close_auction(2).await.unwrap();

    let snapshot = loop {
        match next(&mut sub).await.unwrap() {
            Event::Resubscribed { auction } => break auction.unwrap(),
            // A push that got through before the renewal is fine too.
            Event::Push(Push::BidUpdate { .. }) => {}
            e => panic!("{e:?}"),
        }
    };
    assert!(client.reconnects() >= 1);
    assert_eq!(snapshot.state, AuctionState::Open);
    assert_eq!((snapshot.bid_count, snapshot.high_bidder), (4, 8));
    // Auction 2 closed around the reconnect: either it closed while we were
    // away (no AUCTION_CLOSED push; the renewal's snapshot says CLOSED) or
    // after the renewal (snapshot OPEN, then the push). Either way the
    // client learns it is closed, and the stream ends.
    let mut learned_closed = false;
    while let Some(e) = next(&mut gone).await {
        match e {
            Event::Resubscribed { auction: Some(a) } => {
                learned_closed |= a.state == AuctionState::Closed
            }
            Event::Push(Push::AuctionClosed { auction_id: 2, .. }) => learned_closed = true,
            e => panic!("{e:?}"),
        }
    }
    assert!(learned_closed, "the closing of auction 2 was never seen");

    // The renewed subscription delivers new pushes.
    other.bid(bid(1, 9, 11)).await.unwrap();
    assert!(matches!(
        next(&mut sub).await,
        Some(Event::Push(Push::BidUpdate {
            bid_count: 5,
            high_bidder: 9,
            ..
        }))
    ));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
