//! The Lua scripts against a real Redis (and a real 3-master cluster).

use std::time::Duration;

use gavel_protocol::{BidRequest, BuyRequest, OpenAuctionRequest, OpenSaleRequest, Status};
use gavel_redis::{Op, OpResult, RedisGavel, Update};
use gavel_testkit::redis::{RedisCluster, RedisServer};

const T: Duration = Duration::from_secs(5);
const DAY: Duration = Duration::from_secs(86_400);

fn connect(urls: &[String], cluster: bool) -> RedisGavel {
    RedisGavel::connect(urls, cluster, T, DAY).unwrap()
}

fn open(id: u64, reserve: u64, inc: u64, ends: u64) -> Op {
    Op::OpenAuction(OpenAuctionRequest {
        auction_id: id,
        reserve,
        min_increment: inc,
        ends_at_ms: ends,
    })
}

fn bid(auction_id: u64, bidder_id: u64, amount: u64, bid_id: u64) -> Op {
    Op::Bid(BidRequest {
        auction_id,
        bidder_id,
        amount,
        bid_id,
    })
}

fn buy(sku_id: u64, buyer_id: u64, quantity: u32, order_id: u64) -> Op {
    Op::Buy(BuyRequest {
        sku_id,
        buyer_id,
        quantity,
        order_id,
    })
}

/// (status, value, aux, replayed) of one op.
fn one(g: &mut RedisGavel, op: Op, now: u64) -> (Status, u64, u64, bool) {
    match g.execute(&[op], now).unwrap()[0] {
        OpResult::Outcome {
            result, replayed, ..
        } => (result.status, result.value, result.aux, replayed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn auction_statuses_match_the_contract() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    use Status::*;
    assert_eq!(one(&mut g, open(1, 100, 10, 0), 1), (Ok, 0, 0, false));
    assert_eq!(one(&mut g, open(1, 100, 10, 0), 1), (Ok, 0, 0, true));
    assert_eq!(one(&mut g, open(1, 100, 11, 0), 1).0, AlreadyExists);
    assert_eq!(one(&mut g, bid(2, 1, 100, 1), 1).0, NotFound);
    assert_eq!(
        one(&mut g, bid(1, 1, 99, 1), 1),
        (BelowReserve, 0, 0, false)
    );
    assert_eq!(one(&mut g, bid(1, 1, 100, 2), 1), (Ok, 100, 1, false));
    assert_eq!(one(&mut g, bid(1, 2, 109, 3), 1), (Outbid, 100, 1, false));
    assert_eq!(one(&mut g, bid(1, 2, 110, 4), 1), (Ok, 110, 2, false));
    // Replay of the first accepted bid returns its original outcome.
    assert_eq!(one(&mut g, bid(1, 1, 100, 2), 1), (Ok, 100, 1, true));
    // Same key, other fields.
    assert_eq!(
        g.execute(&[bid(1, 1, 101, 2)], 1).unwrap()[0],
        OpResult::Conflict
    );
    assert_eq!(
        one(&mut g, Op::CloseAuction(1), 1),
        (Ok, 110, 2, false),
        "closing reports the winner"
    );
    assert_eq!(one(&mut g, Op::CloseAuction(1), 1).0, Closed);
    assert_eq!(one(&mut g, bid(1, 3, 1000, 5), 1), (Closed, 110, 2, false));
    // Ends by time, on first touch.
    one(&mut g, open(3, 0, 0, 1000), 1);
    assert_eq!(one(&mut g, bid(3, 1, 5, 1), 999).0, Ok);
    assert_eq!(
        one(&mut g, bid(3, 1, 5, 2), 999).0,
        Outbid,
        "ties lose, increment 0 = 1"
    );
    assert_eq!(one(&mut g, bid(3, 1, 50, 3), 1000), (Closed, 5, 1, false));
    match g
        .execute(&[Op::GetAuction(3), Op::GetAuction(99)], 1000)
        .unwrap()[..]
    {
        [OpResult::Auction(Some(a)), OpResult::Auction(None)] => {
            assert_eq!((a.high_bid, a.high_bidder, a.bid_count), (5, 1, 1));
            assert_eq!(a.state, gavel_protocol::AuctionState::Closed);
        }
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn amounts_near_2_pow_53_and_2_pow_64_compare_exactly() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    let two53 = 1u64 << 53;
    one(&mut g, open(1, 0, 1, 0), 1);
    assert_eq!(one(&mut g, bid(1, 1, two53, 1), 1).0, Status::Ok);
    // As doubles, 2^53 + 1 == 2^53 and this bid would lose.
    assert_eq!(
        one(&mut g, bid(1, 2, two53 + 1, 2), 1),
        (Status::Ok, two53 + 1, 2, false)
    );
    one(&mut g, open(2, 0, 1, 0), 1);
    assert_eq!(one(&mut g, bid(2, 1, u64::MAX - 1, 1), 1).0, Status::Ok);
    assert_eq!(
        one(&mut g, bid(2, 2, u64::MAX, 2), 1),
        (Status::Ok, u64::MAX, 2, false)
    );
    // high + increment overflows u64: nothing can beat it.
    assert_eq!(one(&mut g, bid(2, 3, u64::MAX, 3), 1).0, Status::Outbid);
    one(&mut g, open(3, u64::MAX, 5, 0), 1);
    assert_eq!(
        one(&mut g, bid(3, 1, u64::MAX - 1, 1), 1).0,
        Status::BelowReserve
    );
    assert_eq!(one(&mut g, bid(3, 1, u64::MAX, 2), 1).0, Status::Ok);
}

#[test]
fn sale_statuses_match_the_contract() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    use Status::*;
    let sale = |id, stock, limit, starts, ends| {
        Op::OpenSale(OpenSaleRequest {
            sku_id: id,
            stock,
            per_buyer_limit: limit,
            starts_at_ms: starts,
            ends_at_ms: ends,
        })
    };
    assert_eq!(one(&mut g, sale(1, 5, 3, 10, 100), 10).0, Ok);
    assert_eq!(one(&mut g, sale(1, 5, 3, 10, 100), 10), (Ok, 0, 0, true));
    assert_eq!(one(&mut g, sale(1, 6, 3, 10, 100), 10).0, AlreadyExists);
    assert_eq!(one(&mut g, buy(9, 1, 1, 1), 10).0, NotFound);
    assert_eq!(one(&mut g, buy(1, 1, 1, 1), 9), (NotStarted, 5, 0, false));
    assert_eq!(one(&mut g, buy(1, 1, 2, 2), 10), (Ok, 3, 2, false));
    assert_eq!(
        one(&mut g, buy(1, 1, 2, 3), 10),
        (LimitExceeded, 3, 2, false)
    );
    assert_eq!(one(&mut g, buy(1, 2, 3, 4), 10), (Ok, 0, 3, false));
    assert_eq!(one(&mut g, buy(1, 3, 1, 5), 10), (SoldOut, 0, 0, false));
    assert_eq!(one(&mut g, buy(1, 1, 2, 2), 10), (Ok, 3, 2, true), "replay");
    assert_eq!(
        g.execute(&[buy(1, 1, 1, 2)], 10).unwrap()[0],
        OpResult::Conflict
    );
    assert_eq!(one(&mut g, sale(2, 5, 0, 0, 100), 10).0, Ok);
    assert_eq!(one(&mut g, buy(2, 1, 1, 1), 100).0, Closed);
    // No partial fills and exact stock near u64::MAX.
    assert_eq!(one(&mut g, sale(3, u64::MAX, 0, 0, 0), 1).0, Ok);
    assert_eq!(
        one(&mut g, buy(3, 1, u32::MAX, 1), 1),
        (Ok, u64::MAX - u32::MAX as u64, u32::MAX as u64, false)
    );
}

#[test]
fn noscript_reloads_and_retries() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    one(&mut g, open(1, 0, 1, 0), 1);
    let flushed = gavel_testkit::redis::raw_command(r.port(), "SCRIPT FLUSH").unwrap();
    assert!(flushed.starts_with("+OK"), "{flushed}");
    assert_eq!(one(&mut g, bid(1, 1, 10, 1), 1).0, Status::Ok);
}

#[test]
fn close_auction_not_found() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    assert_eq!(
        one(&mut g, Op::CloseAuction(404), 1),
        (Status::NotFound, 0, 0, false)
    );
}

#[test]
fn unreachable_or_silent_redis_is_an_error_within_the_timeout() {
    use gavel_redis::RedisError;
    use std::time::Instant;
    let short = Duration::from_millis(300);
    // Nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = Instant::now();
    let e = RedisGavel::connect(&[format!("redis://127.0.0.1:{port}")], false, short, DAY)
        .err()
        .expect("no Redis there");
    assert!(matches!(e, RedisError::Unavailable(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Accepts connections (kernel backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let t = Instant::now();
    let e = RedisGavel::connect(&[url], false, short, DAY)
        .err()
        .expect("a silent peer is no Redis");
    assert!(matches!(e, RedisError::Unavailable(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn password_in_the_url() {
    let r = RedisServer::start_with(&["--requirepass", "pw"]);
    let url = format!("redis://:pw@127.0.0.1:{}", r.port());
    let mut g = connect(&[url], false);
    assert_eq!(one(&mut g, open(1, 0, 1, 0), 1).0, Status::Ok);
    let wrong = format!("redis://:nope@127.0.0.1:{}", r.port());
    assert!(RedisGavel::connect(&[wrong], false, T, DAY).is_err());
    assert!(RedisGavel::connect(&[r.url()], false, T, DAY).is_err());
}

#[test]
fn outage_is_unavailable_then_reconnect_recovers() {
    let mut r = RedisServer::start();
    let mut g = RedisGavel::connect(&[r.url()], false, Duration::from_millis(500), DAY).unwrap();
    assert_eq!(one(&mut g, open(1, 0, 1, 0), 1).0, Status::Ok);
    r.stop();
    match g.execute(&[bid(1, 1, 10, 1)], 1) {
        Err(gavel_redis::RedisError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(g.reconnect().is_err(), "still down");
    r.restart();
    g.reconnect().unwrap();
    // No persistence in the harness: the auction is gone, the scripts are back.
    assert_eq!(one(&mut g, bid(1, 1, 10, 1), 1).0, Status::NotFound);
    assert_eq!(one(&mut g, open(1, 0, 1, 0), 1).0, Status::Ok);
    assert_eq!(one(&mut g, bid(1, 1, 10, 1), 1).0, Status::Ok);
}

#[test]
fn local_shas_match_script_load() {
    let r = RedisServer::start();
    let _g = connect(&[r.url()], false);
    for sha in gavel_redis::script_shas() {
        let reply =
            gavel_testkit::redis::raw_command(r.port(), &format!("SCRIPT EXISTS {sha}")).unwrap();
        assert_eq!(reply, "*1\r\n:1\r\n", "{sha}");
    }
}

fn contention(urls: Vec<String>, cluster: bool) {
    {
        let mut g = connect(&urls, cluster);
        one(&mut g, open(7, 0, 1, 0), 1);
        g.execute(
            &[Op::OpenSale(OpenSaleRequest {
                sku_id: 7,
                stock: 100,
                per_buyer_limit: 0,
                starts_at_ms: 0,
                ends_at_ms: 0,
            })],
            1,
        )
        .unwrap();
    }
    // 300 bidders on one auction, 300 buyers on 100 units, 30 threads.
    let threads: Vec<_> = (0..30u64)
        .map(|t| {
            let urls = urls.clone();
            std::thread::spawn(move || {
                let mut g = connect(&urls, cluster);
                let mut ops = Vec::new();
                for i in 0..10u64 {
                    let who = t * 10 + i + 1;
                    ops.push(bid(7, who, 1000 + (who * 7919) % 5000, who));
                    ops.push(buy(7, who, 1, who));
                }
                let res = g.execute(&ops, 1).unwrap();
                let mut ok_bids = 0u64;
                let mut max_ok = 0u64;
                let mut sold = 0u64;
                for (op, r) in ops.iter().zip(res) {
                    if let (Op::Bid(b), OpResult::Outcome { result, .. }) = (op, r) {
                        if result.status == Status::Ok {
                            ok_bids += 1;
                            max_ok = max_ok.max(b.amount);
                        }
                    }
                    if let (Op::Buy(_), OpResult::Outcome { result, .. }) = (op, r) {
                        if result.status == Status::Ok {
                            sold += 1;
                        } else {
                            assert_eq!(result.status, Status::SoldOut);
                        }
                    }
                }
                (ok_bids, max_ok, sold)
            })
        })
        .collect();
    let (mut oks, mut max, mut sold) = (0, 0, 0);
    for t in threads {
        let (o, m, s) = t.join().unwrap();
        oks += o;
        max = max.max(m);
        sold += s;
    }
    let mut g = connect(&urls, cluster);
    let a = match g.execute(&[Op::GetAuction(7), Op::GetSale(7)], 1).unwrap()[..] {
        [OpResult::Auction(Some(a)), OpResult::Sale(Some(s))] => {
            assert_eq!(s.sold, 100, "exactly the stock is sold");
            a
        }
        ref other => panic!("{other:?}"),
    };
    assert_eq!(sold, 100);
    let top = (1..=300u64)
        .map(|w| 1000 + (w * 7919) % 5000)
        .max()
        .unwrap();
    assert_eq!(a.high_bid, top, "the maximum sent wins");
    assert_eq!(max, top);
    assert_eq!(a.bid_count, oks, "bid_count = OKs");
}

#[test]
fn three_hundred_clients_on_one_node() {
    let r = RedisServer::start();
    contention(vec![r.url()], false);
}

#[test]
fn three_hundred_clients_on_a_three_master_cluster() {
    let c = RedisCluster::start();
    let urls = c.urls();
    // Keys of different auctions land on different masters; one auction's
    // keys share a slot.
    let mut g = connect(&urls, true);
    for id in 101..=120 {
        assert_eq!(one(&mut g, open(id, 0, 1, 0), 1).0, Status::Ok);
        assert_eq!(one(&mut g, bid(id, 1, 5, 1), 1).0, Status::Ok);
    }
    contention(urls.clone(), true);

    // One master loses its scripts: in a batch spread over all masters, only
    // the ops it refused are sent again; the others ran once, so nothing
    // comes back as a replay.
    let ids: Vec<u64> = (201..=230).collect();
    let opens: Vec<Op> = ids.iter().map(|&id| open(id, 0, 1, 0)).collect();
    g.execute(&opens, 1).unwrap();
    let port: u16 = urls[0].rsplit(':').next().unwrap().parse().unwrap();
    let flushed = gavel_testkit::redis::raw_command(port, "SCRIPT FLUSH").unwrap();
    assert!(flushed.starts_with("+OK"), "{flushed}");
    let bids: Vec<Op> = ids.iter().map(|&id| bid(id, 7, 50, 1)).collect();
    for r in g.execute(&bids, 1).unwrap() {
        match r {
            OpResult::Outcome {
                result, replayed, ..
            } => assert_eq!((result.status, replayed), (Status::Ok, false)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn password_protected_cluster() {
    // The masters found in CLUSTER SLOTS take the seed URL's credentials.
    let c = RedisCluster::start_with_password("pw");
    let mut g = connect(&c.urls(), true);
    let opens: Vec<Op> = (1..=20).map(|id| open(id, 0, 1, 0)).collect();
    let bids: Vec<Op> = (1..=20).map(|id| bid(id, 1, 5, 1)).collect();
    g.execute(&opens, 1).unwrap();
    for r in g.execute(&bids, 1).unwrap() {
        assert!(
            matches!(r, OpResult::Outcome { result, .. } if result.status == Status::Ok),
            "{r:?}"
        );
    }
}

#[test]
fn updates_are_published() {
    let r = RedisServer::start();
    let url = r.url();
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sub_url = url.clone();
    std::thread::spawn(move || {
        let mut first = true;
        let _ = gavel_redis::client::subscribe_updates(&sub_url, T, |us| {
            if first {
                first = false;
                let _ = ready_tx.send(());
            }
            us.iter().all(|u| tx.send(*u).is_ok())
        });
    });
    let mut g = connect(&[url], false);
    one(&mut g, open(5, 0, 1, 0), 1);
    // The first call says Redis confirmed the subscription.
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("SUBSCRIBE confirmed");
    one(&mut g, bid(5, 3, 10, 10), 1);
    let amount = 20;
    one(&mut g, bid(5, 4, amount, amount), 1);
    one(&mut g, Op::CloseAuction(5), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut saw_bid = false;
    loop {
        let u = rx
            .recv_timeout(deadline - std::time::Instant::now())
            .expect("update");
        match u {
            Update::Bid {
                auction_id: 5,
                high_bid,
                high_bidder: 4,
                ..
            } if high_bid == amount => saw_bid = true,
            Update::Closed {
                auction_id: 5,
                winning_bid,
                winner: 4,
            } => {
                assert_eq!(winning_bid, amount);
                assert!(saw_bid);
                break;
            }
            _ => {}
        }
    }
    // A read past the end closes the auction and publishes it, as a bid would.
    one(&mut g, open(6, 0, 1, 100), 1);
    match g.execute(&[Op::GetAuction(6)], 99).unwrap()[0] {
        OpResult::Auction(Some(a)) => assert_eq!(a.state, gavel_protocol::AuctionState::Open),
        ref other => panic!("{other:?}"),
    }
    match g.execute(&[Op::GetAuction(6)], 100).unwrap()[0] {
        OpResult::Auction(Some(a)) => assert_eq!(a.state, gavel_protocol::AuctionState::Closed),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(
        one(&mut g, Op::CloseAuction(6), 101).0,
        Status::Closed,
        "the read closed it"
    );
    loop {
        let u = rx
            .recv_timeout(deadline - std::time::Instant::now())
            .expect("closing of auction 6");
        if u == (Update::Closed {
            auction_id: 6,
            winning_bid: 0,
            winner: 0,
        }) {
            break;
        }
    }
}

/// A fresh bid outcome tells a node the auction's end (its OUTBID filter
/// must stop answering there once the end has passed); replays do not.
#[test]
fn bid_outcomes_carry_the_end_time() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    g.execute(&[open(1, 10, 1, 5_000), open(2, 0, 1, 0)], 1)
        .unwrap();
    let ends = |g: &mut RedisGavel, op: Op, now: u64| match g.execute(&[op], now).unwrap()[0] {
        OpResult::Outcome {
            result, ends_ms, ..
        } => (result.status, ends_ms),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ends(&mut g, bid(1, 7, 5, 1), 2),
        (Status::BelowReserve, 5_000)
    );
    assert_eq!(ends(&mut g, bid(1, 7, 50, 2), 2), (Status::Ok, 5_000));
    assert_eq!(ends(&mut g, bid(1, 8, 40, 3), 2), (Status::Outbid, 5_000));
    assert_eq!(ends(&mut g, bid(1, 7, 50, 2), 2), (Status::Ok, 0), "replay");
    assert_eq!(
        ends(&mut g, bid(1, 8, 90, 4), 6_000),
        (Status::Closed, 5_000)
    );
    assert_eq!(ends(&mut g, bid(2, 8, 90, 1), 6_000), (Status::Ok, 0));
}
