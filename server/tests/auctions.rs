//! The contract's auction rows, over the wire against the real binary.

mod common;

use common::{now_ms, Server};
use gavel_protocol::{AuctionState, ClientError, ErrorCode, Push, ResultPayload, Status};

fn r(status: Status, value: u64, aux: u64) -> ResultPayload {
    ResultPayload::new(status, value, aux)
}

#[test]
fn open_bid_outbid_reserve_and_ties() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let o = c.open_auction(1, 1000, 50, 0).unwrap();
    assert_eq!((o.result, o.replayed), (r(Status::Ok, 0, 0), false));

    assert_eq!(
        c.bid(1, 7, 999, 1).unwrap().result,
        r(Status::BelowReserve, 0, 0)
    );
    assert_eq!(c.bid(1, 7, 1000, 2).unwrap().result, r(Status::Ok, 1000, 7));
    // Tie and below the increment lose; the earlier bid stands.
    assert_eq!(
        c.bid(1, 8, 1000, 3).unwrap().result,
        r(Status::Outbid, 1000, 7)
    );
    assert_eq!(
        c.bid(1, 8, 1049, 4).unwrap().result,
        r(Status::Outbid, 1000, 7)
    );
    assert_eq!(c.bid(1, 8, 1050, 5).unwrap().result, r(Status::Ok, 1050, 8));

    let a = c.get_auction(1).unwrap().unwrap();
    assert_eq!(
        (
            a.state,
            a.high_bid,
            a.high_bidder,
            a.bid_count,
            a.reserve,
            a.min_increment,
            a.ends_at_ms
        ),
        (AuctionState::Open, 1050, 8, 2, 1000, 50, 0)
    );
    assert_eq!(
        c.bid(2, 8, 1050, 6).unwrap().result,
        r(Status::NotFound, 0, 0)
    );
    assert_eq!(c.get_auction(2).unwrap(), None);
}

#[test]
fn zero_min_increment_is_one() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_auction(1, 0, 0, 0).unwrap();
    assert_eq!(c.bid(1, 1, 10, 1).unwrap().result.status, Status::Ok);
    assert_eq!(c.bid(1, 2, 10, 2).unwrap().result.status, Status::Outbid);
    assert_eq!(c.bid(1, 2, 11, 3).unwrap().result.status, Status::Ok);
    assert_eq!(c.get_auction(1).unwrap().unwrap().min_increment, 0);
}

#[test]
fn open_twice_replays_or_already_exists() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_auction(5, 10, 1, 0).unwrap();
    let again = c.open_auction(5, 10, 1, 0).unwrap();
    assert_eq!((again.result.status, again.replayed), (Status::Ok, true));
    let differ = c.open_auction(5, 11, 1, 0).unwrap();
    assert_eq!(
        (differ.result.status, differ.replayed),
        (Status::AlreadyExists, false)
    );
}

#[test]
fn close_reports_winner_and_rejects_later_bids() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    c.bid(1, 9, 500, 1).unwrap();
    assert_eq!(c.close_auction(1).unwrap().result, r(Status::Ok, 500, 9));
    assert_eq!(
        c.bid(1, 10, 900, 2).unwrap().result,
        r(Status::Closed, 500, 9)
    );
    assert_eq!(
        c.close_auction(1).unwrap().result,
        r(Status::Closed, 500, 9)
    );
    assert_eq!(
        c.get_auction(1).unwrap().unwrap().state,
        AuctionState::Closed
    );
    assert_eq!(
        c.close_auction(2).unwrap().result,
        r(Status::NotFound, 0, 0)
    );
    // No bids: winner 0.
    c.open_auction(3, 0, 1, 0).unwrap();
    assert_eq!(c.close_auction(3).unwrap().result, r(Status::Ok, 0, 0));
}

#[test]
fn auction_ends_by_time_and_sweep_pushes_closed() {
    let s = Server::start(&["--sweep-interval", "10ms"]);
    let mut c = s.client();
    let mut sub = s.client();
    let ends = now_ms() + 300;
    c.open_auction(1, 0, 1, ends).unwrap();
    assert_eq!(sub.subscribe(1).unwrap().result.status, Status::Ok);
    c.bid(1, 4, 100, 1).unwrap();
    assert_eq!(
        sub.next_push().unwrap(),
        Push::BidUpdate {
            auction_id: 1,
            high_bid: 100,
            high_bidder: 4,
            bid_count: 1
        }
    );
    // The sweep closes it with no request touching it.
    assert_eq!(
        sub.next_push().unwrap(),
        Push::AuctionClosed {
            auction_id: 1,
            winning_bid: 100,
            winner: 4
        }
    );
    assert!(now_ms() >= ends);
    assert_eq!(
        c.bid(1, 5, 200, 2).unwrap().result,
        r(Status::Closed, 100, 4)
    );
    let a = c.get_auction(1).unwrap().unwrap();
    assert_eq!(a.state, AuctionState::Closed);
}

#[test]
fn auction_already_past_its_end_is_closed_on_first_touch() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 1).unwrap();
    assert_eq!(c.bid(1, 4, 100, 1).unwrap().result, r(Status::Closed, 0, 0));
    assert_eq!(c.subscribe(1).unwrap().result.status, Status::Closed);
}

#[test]
fn idempotent_bid_replays_across_connections_and_after_close() {
    let s = Server::start(&[]);
    let mut a = s.client();
    a.open_auction(1, 0, 1, 0).unwrap();
    let first = a.bid(1, 7, 100, 42).unwrap();
    assert_eq!(
        (first.result, first.replayed),
        (r(Status::Ok, 100, 7), false)
    );
    drop(a);

    let mut b = s.client();
    b.bid(1, 8, 200, 43).unwrap();
    let again = b.bid(1, 7, 100, 42).unwrap();
    // The original outcome, not the current state, with REPLAYED.
    assert_eq!(
        (again.result, again.replayed),
        (r(Status::Ok, 100, 7), true)
    );
    let a = b.get_auction(1).unwrap().unwrap();
    assert_eq!(
        (a.high_bid, a.bid_count),
        (200, 2),
        "a replay changes nothing"
    );

    // A rejected bid replays its rejection too.
    let lost = b.bid(1, 9, 150, 44).unwrap();
    assert_eq!(lost.result, r(Status::Outbid, 200, 8));
    let mut c = s.client();
    assert_eq!(
        c.bid(1, 9, 150, 44).unwrap(),
        gavel_protocol::client::Outcome {
            result: lost.result,
            replayed: true
        }
    );

    match c.bid(1, 7, 101, 42) {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::IdempotencyConflict),
        other => panic!("expected IDEMPOTENCY_CONFLICT, got {other:?}"),
    }
    match c.bid(1, 6, 100, 42) {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::IdempotencyConflict),
        other => panic!("expected IDEMPOTENCY_CONFLICT, got {other:?}"),
    }
}

#[test]
fn amounts_near_the_top_of_u64_compare_exactly() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    let big = 1u64 << 53;
    assert_eq!(c.bid(1, 1, big, 1).unwrap().result.status, Status::Ok);
    assert_eq!(
        c.bid(1, 2, big + 1, 2).unwrap().result,
        r(Status::Ok, big + 1, 2)
    );
    assert_eq!(
        c.bid(1, 3, u64::MAX - 1, 3).unwrap().result.status,
        Status::Ok
    );
    assert_eq!(
        c.bid(1, 4, u64::MAX, 4).unwrap().result,
        r(Status::Ok, u64::MAX, 4)
    );
    assert_eq!(
        c.bid(1, 5, u64::MAX, 5).unwrap().result,
        r(Status::Outbid, u64::MAX, 4)
    );
}

#[test]
fn subscribe_unsubscribe() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let mut sub = s.client();
    assert_eq!(sub.subscribe(1).unwrap().result.status, Status::NotFound);
    assert_eq!(sub.unsubscribe(1).unwrap().result.status, Status::NotFound);
    c.open_auction(1, 0, 1, 0).unwrap();
    assert_eq!(sub.subscribe(1).unwrap().result.status, Status::Ok);
    c.bid(1, 1, 10, 1).unwrap();
    assert!(matches!(
        sub.next_push().unwrap(),
        Push::BidUpdate { high_bid: 10, .. }
    ));
    assert_eq!(sub.unsubscribe(1).unwrap().result.status, Status::Ok);
    c.bid(1, 1, 20, 2).unwrap();
    c.close_auction(1).unwrap();
    // Replies and pushes of one auction leave its shard in order, so any push
    // for the bids above would arrive before this GET_AUCTION's reply.
    assert_eq!(sub.get_auction(1).unwrap().unwrap().bid_count, 2);
    assert_eq!(sub.queued_pushes(), 0, "no push after unsubscribing");
}

#[test]
fn same_auction_replies_arrive_in_order_when_pipelined() {
    let s = Server::start(&["--shards", "4"]);
    let mut c = s.client();
    for id in 1..=8 {
        c.open_auction(id, 0, 1, 0).unwrap();
    }
    let mut sent = Vec::new();
    for i in 0..2000u64 {
        let auction = 1 + i % 8;
        let id = c.send(&gavel_protocol::Request::Bid(gavel_protocol::BidRequest {
            auction_id: auction,
            bidder_id: i + 1,
            amount: 10 + i,
            bid_id: i + 1,
        }));
        sent.push((id, auction));
    }
    c.flush().unwrap();
    let mut last_per_auction = std::collections::HashMap::new();
    let ids: std::collections::HashMap<u32, u64> = sent.iter().copied().collect();
    for _ in 0..sent.len() {
        let f = c.recv().unwrap();
        let auction = ids[&f.request_id];
        let prev = last_per_auction.insert(auction, f.request_id);
        if let Some(p) = prev {
            assert!(
                f.request_id > p,
                "auction {auction}: reply {} after {p}",
                f.request_id
            );
        }
    }
}
