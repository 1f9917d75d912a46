//! The Lua scripts against a real Redis (and a real 3-master cluster).

use std::collections::HashSet;
use std::time::Duration;

use gavel_protocol::{BidRequest, BuyRequest, OpenAuctionRequest, OpenSaleRequest, Status};
use gavel_redis::channels::Event;
use gavel_redis::{keys, Op, OpResult, RedisGavel, Update};
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

/// Subscribes to the update channels of `auctions` (each on the master
/// serving its slot) and forwards every event read, from a thread per master.
fn listen(urls: &[String], cluster: bool, auctions: &[u64]) -> std::sync::mpsc::Receiver<Event> {
    use std::io::{Read, Write};
    let (masters, creds) = gavel_redis::channels::masters(urls, cluster, T).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for (first, last, url) in &masters {
        let mine: Vec<u64> = auctions
            .iter()
            .copied()
            .filter(|&id| {
                let slot = redis::cluster_routing::get_slot(keys::updates(id).as_bytes());
                (*first..=*last).contains(&slot)
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut sock = gavel_redis::channels::connect(url, &creds, T).unwrap();
        let mut out = Vec::new();
        for &id in &mine {
            gavel_redis::channels::ssubscribe(id, &mut out);
        }
        sock.write_all(&out).unwrap();
        sock.set_read_timeout(None).unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = match sock.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some((v, used)) = gavel_redis::resp::parse(&buf).unwrap() {
                    buf.drain(..used);
                    if tx.send(gavel_redis::channels::event(&v).unwrap()).is_err() {
                        return;
                    }
                }
            }
        });
    }
    rx
}

/// Each auction's updates go on its own shard channel, and only there: a
/// subscriber to auctions 5 and 6 sees their bids and closings (the one a
/// read past the end makes too), and nothing of auction 7.
fn updates_are_published(urls: &[String], cluster: bool) {
    let rx = listen(urls, cluster, &[5, 6]);
    let mut confirmed = HashSet::new();
    while confirmed.len() < 2 {
        match rx
            .recv_timeout(Duration::from_secs(10))
            .expect("SSUBSCRIBE confirmed")
        {
            Event::Subscribed(id) => confirmed.insert(id),
            other => panic!("{other:?}"),
        };
    }
    let rx = {
        let (tx, updates) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(e) = rx.recv() {
                match e {
                    Event::Update(u) => {
                        if tx.send(u).is_err() {
                            return;
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
        });
        updates
    };
    let mut g = connect(urls, cluster);
    one(&mut g, open(7, 0, 1, 0), 1);
    one(&mut g, bid(7, 3, 10, 10), 1);
    one(&mut g, Op::CloseAuction(7), 1);
    one(&mut g, open(5, 0, 1, 0), 1);
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
        assert_ne!(u.auction_id(), 7, "{u:?}");
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
        assert_ne!(u.auction_id(), 7, "{u:?}");
        if u == (Update::Closed {
            auction_id: 6,
            winning_bid: 0,
            winner: 0,
        }) {
            break;
        }
    }
    // Auction 7's bid and closing, made first, never came.
    assert!(rx.try_recv().is_err());
}

#[test]
fn updates_are_published_on_one_node() {
    let r = RedisServer::start();
    updates_are_published(&[r.url()], false);
}

#[test]
fn updates_are_published_on_the_masters_of_a_cluster() {
    let c = RedisCluster::start();
    updates_are_published(&c.urls(), true);
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

/// A plain connection for looking at (or planting) what the scripts keep.
fn raw(r: &RedisServer) -> redis::Connection {
    redis::Client::open(r.url())
        .unwrap()
        .get_connection_with_timeout(T)
        .unwrap()
}

/// The remembered keys in an auction's hash (fields named by digits).
fn keys_held(c: &mut redis::Connection, key: &str) -> usize {
    fields(c, key)
        .iter()
        .filter(|f| f.starts_with(|ch: char| ch.is_ascii_digit()))
        .count()
}

fn fields(c: &mut redis::Connection, key: &str) -> Vec<String> {
    let mut f: Vec<String> = redis::cmd("HKEYS").arg(key).query(c).unwrap();
    f.sort();
    f
}

const AUCTION_FIELDS: [&str; 8] = [
    "bar", "bidder", "closed", "count", "ends", "high", "inc", "reserve",
];

/// PROTOCOL.md §7, for BUY as for BID: a rejected purchase stores no key
/// (a retry is evaluated afresh, and may then be OK); an accepted one does,
/// and replays (or conflicts).
#[test]
fn rejected_buys_store_nothing_and_retries_are_evaluated_afresh() {
    use Status::*;
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    let mut c = raw(&r);
    let sale = Op::OpenSale(OpenSaleRequest {
        sku_id: 1,
        stock: 3,
        per_buyer_limit: 2,
        starts_at_ms: 10,
        ends_at_ms: 0,
    });
    one(&mut g, sale, 1);
    assert_eq!(one(&mut g, buy(1, 1, 1, 1), 9), (NotStarted, 3, 0, false));
    assert_eq!(
        one(&mut g, buy(1, 1, 3, 2), 10),
        (LimitExceeded, 3, 0, false)
    );
    assert_eq!(one(&mut g, buy(1, 2, 2, 3), 10), (Ok, 1, 2, false));
    assert_eq!(one(&mut g, buy(1, 3, 2, 4), 10), (SoldOut, 1, 0, false));
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    keys.sort();
    assert_eq!(
        keys,
        ["gavel:{s:1}", "gavel:{s:1}:held", "gavel:{s:1}:order:3"],
        "only the accepted purchase's key"
    );
    // Retried: evaluated again (NOT_STARTED is now OK), never replayed;
    // other fields are no conflict.
    assert_eq!(one(&mut g, buy(1, 1, 1, 1), 10), (Ok, 0, 1, false));
    assert_eq!(one(&mut g, buy(1, 1, 1, 1), 10), (Ok, 0, 1, true));
    assert_eq!(one(&mut g, buy(1, 3, 1, 4), 10), (SoldOut, 0, 0, false));
    assert_eq!(one(&mut g, buy(1, 1, 2, 2), 10), (SoldOut, 0, 1, false));
    assert_eq!(
        g.execute(&[buy(1, 2, 1, 3)], 10).unwrap()[0],
        OpResult::Conflict
    );
}

/// PROTOCOL.md §7: a rejected bid's key may be forgotten. These scripts
/// keep nothing for it: a retry is evaluated afresh, even with other fields.
/// Accepted keys are fields of the auction's hash, and still replay (or
/// conflict) after the auction closed.
#[test]
fn rejected_bids_store_nothing_and_retries_are_evaluated_afresh() {
    use Status::*;
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    let mut c = raw(&r);
    one(&mut g, open(1, 100, 10, 0), 1);
    assert_eq!(one(&mut g, bid(1, 1, 99, 1), 1).0, BelowReserve);
    assert_eq!(one(&mut g, bid(1, 1, 100, 2), 1), (Ok, 100, 1, false));
    assert_eq!(one(&mut g, bid(1, 2, 105, 3), 1), (Outbid, 100, 1, false));
    let mut want: Vec<&str> = AUCTION_FIELDS.to_vec();
    want.push("2");
    want.sort();
    assert_eq!(fields(&mut c, "gavel:{a:1}"), want, "only the accepted key");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert_eq!(keys, vec!["gavel:{a:1}".to_string()], "no key of its own");

    // Retried: evaluated again, never replayed; other fields are no conflict.
    assert_eq!(one(&mut g, bid(1, 2, 105, 3), 1), (Outbid, 100, 1, false));
    assert_eq!(one(&mut g, bid(1, 1, 99, 1), 1).0, BelowReserve);
    assert_eq!(one(&mut g, bid(1, 2, 110, 3), 1), (Ok, 110, 2, false));
    assert_eq!(one(&mut g, bid(1, 2, 110, 3), 1), (Ok, 110, 2, true));
    assert_eq!(
        g.execute(&[bid(1, 2, 111, 3)], 1).unwrap()[0],
        OpResult::Conflict
    );

    one(&mut g, Op::CloseAuction(1), 1);
    assert_eq!(one(&mut g, bid(1, 3, 500, 4), 1), (Closed, 110, 2, false));
    assert_eq!(one(&mut g, bid(1, 1, 100, 2), 1), (Ok, 100, 1, true));
    assert_eq!(
        g.execute(&[bid(1, 1, 500, 2)], 1).unwrap()[0],
        OpResult::Conflict
    );
    assert!(!fields(&mut c, "gavel:{a:1}").contains(&"4".to_string()));
}

/// Every 32nd accepted bid sweeps part of the auction's hash once a key
/// may have expired: keys older than the window go, younger ones stay (and
/// replay), and a busy auction's hash holds about a window's worth of keys,
/// not every key it ever took.
#[test]
fn accepted_keys_are_kept_for_the_window_then_swept() {
    let r = RedisServer::start();
    let window = 1_000u64;
    let mut g = RedisGavel::connect(&[r.url()], false, T, Duration::from_millis(window)).unwrap();
    let mut c = raw(&r);
    one(&mut g, open(1, 0, 1, 0), 1);
    let mut amount = 0u64;
    let mut next_id = 1u64;
    // One wave of `n` accepted bids at time `now`; returns their ids.
    let mut wave = |g: &mut RedisGavel, n: u64, now: u64| {
        let ops: Vec<Op> = (0..n)
            .map(|i| {
                amount += 1;
                bid(1, 1 + i % 7, amount, next_id + i)
            })
            .collect();
        for res in g.execute(&ops, now).unwrap() {
            match res {
                OpResult::Outcome { result, .. } => assert_eq!(result.status, Status::Ok),
                other => panic!("{other:?}"),
            }
        }
        next_id += n;
        (next_id - n..next_id).collect::<Vec<u64>>()
    };
    let first = wave(&mut g, 300, 10_000);
    // Checkpoints passed (counts 32, 64, ...), but nothing is a window old.
    let second = wave(&mut g, 300, 10_999);
    assert_eq!(keys_held(&mut c, "gavel:{a:1}"), 600);
    for &id in first.iter().step_by(37) {
        match g
            .execute(&[bid(1, 1 + (id - 1) % 7, id, id)], 10_999)
            .unwrap()[0]
        {
            OpResult::Outcome {
                result, replayed, ..
            } => assert_eq!((result.status, replayed), (Status::Ok, true), "key {id}"),
            ref other => panic!("{other:?}"),
        }
    }
    // Waves a window apart: the hash never holds much more than two waves.
    let mut last = second;
    for w in 0..12u64 {
        last = wave(&mut g, 300, 11_000 + w * window);
        let n = keys_held(&mut c, "gavel:{a:1}");
        assert!(n <= 3 * 300, "wave {w}: {n} keys");
    }
    // The first keys are forgotten: a retry is evaluated afresh (OUTBID,
    // not replayed); the last wave's keys still replay.
    let now = 11_000 + 11 * window;
    assert_eq!(
        one(&mut g, bid(1, 1, 1, 1), now),
        (Status::Outbid, amount, 1 + 299 % 7, false)
    );
    let id = *last.last().unwrap();
    assert_eq!(
        one(&mut g, bid(1, 1 + 299 % 7, amount, id), now),
        (Status::Ok, amount, 1 + 299 % 7, true)
    );
}

fn d(v: u64) -> String {
    format!("{v:020}")
}

/// A small auction's hash stays a listpack (compact); at the first
/// checkpoint (32 accepted bids) it becomes a hashtable, where finding the
/// bid's key costs the same however many keys there are.
#[test]
fn a_busy_auction_becomes_a_hashtable() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    let mut c = raw(&r);
    one(&mut g, open(1, 0, 1, 0), 1);
    let encoding = |c: &mut redis::Connection| -> String {
        redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg("gavel:{a:1}")
            .query(c)
            .unwrap()
    };
    let bids: Vec<Op> = (1..=31).map(|i| bid(1, 1, i, i)).collect();
    g.execute(&bids, 1).unwrap();
    assert_eq!(encoding(&mut c), "listpack");
    assert_eq!(one(&mut g, bid(1, 1, 32, 32), 1).0, Status::Ok);
    assert_eq!(encoding(&mut c), "hashtable");
    assert_eq!(keys_held(&mut c, "gavel:{a:1}"), 32);
}

/// An auction and keys written by the scripts before the lean `bid.lua`
/// (no `bar`, 20-digit counts, one Redis key per bid id, rejected outcomes
/// too) keep working: the state is brought up to date on first touch, and
/// those keys still replay.
#[test]
fn hashes_written_by_earlier_scripts_stay_readable() {
    let r = RedisServer::start();
    earlier_scripts(&mut connect(&[r.url()], false), &mut raw(&r));
}

/// The same on a cluster: the earlier key is read by name, under the
/// auction's hash tag, so in the slot the script runs in.
#[test]
fn hashes_written_by_earlier_scripts_stay_readable_on_a_cluster() {
    let cl = RedisCluster::start();
    let urls = cl.urls();
    let mut c = redis::cluster::ClusterClient::new(urls.clone())
        .unwrap()
        .get_connection()
        .unwrap();
    earlier_scripts(&mut connect(&urls, true), &mut c);
}

fn earlier_scripts(g: &mut RedisGavel, c: &mut impl redis::ConnectionLike) {
    use Status::*;
    let _: () = redis::cmd("HSET")
        .arg("gavel:{a:5}")
        .arg(&[
            ("reserve", d(100)),
            ("inc", d(10)),
            ("ends", d(0)),
            ("high", d(150)),
            ("bidder", d(7)),
            ("count", d(2)),
            ("closed", "0".into()),
        ])
        .query(c)
        .unwrap();
    for (id, record) in [
        (42, format!("{}|{}|0|{}|{}", d(7), d(150), d(150), d(7))),
        (43, format!("{}|{}|1|{}|{}", d(8), d(120), d(150), d(7))),
    ] {
        let _: () = redis::cmd("SET")
            .arg(format!("gavel:{{a:5}}:bid:{id}"))
            .arg(record)
            .arg("PX")
            .arg(86_400_000)
            .query(c)
            .unwrap();
    }
    assert_eq!(one(g, bid(5, 7, 150, 42), 1), (Ok, 150, 7, true));
    assert_eq!(one(g, bid(5, 8, 120, 43), 1), (Outbid, 150, 7, true));
    assert_eq!(
        g.execute(&[bid(5, 7, 151, 42)], 1).unwrap()[0],
        OpResult::Conflict
    );
    assert_eq!(one(g, bid(5, 9, 159, 44), 1), (Outbid, 150, 7, false));
    assert_eq!(one(g, bid(5, 9, 99, 45), 1), (BelowReserve, 150, 7, false));
    assert_eq!(one(g, bid(5, 9, 160, 46), 1), (Ok, 160, 9, false));
    assert_eq!(one(g, bid(5, 9, 160, 46), 1), (Ok, 160, 9, true));
    match g.execute(&[Op::GetAuction(5)], 1).unwrap()[0] {
        OpResult::Auction(Some(a)) => {
            assert_eq!((a.high_bid, a.high_bidder, a.bid_count), (160, 9, 3));
            assert_eq!((a.reserve, a.min_increment), (100, 10));
        }
        ref other => panic!("{other:?}"),
    }
    let count: String = redis::cmd("HGET")
        .arg("gavel:{a:5}")
        .arg("count")
        .query(c)
        .unwrap();
    assert_eq!(count, d(3), "an earlier version's count keeps its width");
    assert_eq!(one(g, Op::CloseAuction(5), 1), (Ok, 160, 9, false));
    assert_eq!(one(g, bid(5, 7, 150, 42), 1), (Ok, 150, 7, true));
}

/// The next acceptable amount is computed with doubles below 2^53 and on
/// exact halves above: both sides of the border, huge increments, and the
/// top of u64.
#[test]
fn the_next_step_is_exact_on_both_sides_of_2_pow_53() {
    use Status::*;
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    let p53 = 1u64 << 53;
    one(&mut g, open(1, 0, 1, 0), 1);
    assert_eq!(one(&mut g, bid(1, 1, p53 - 2, 1), 1).0, Ok);
    assert_eq!(one(&mut g, bid(1, 2, p53 - 2, 2), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(1, 2, p53 - 1, 3), 1).0, Ok);
    assert_eq!(one(&mut g, bid(1, 3, p53 - 1, 4), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(1, 3, p53, 5), 1).0, Ok);
    assert_eq!(one(&mut g, bid(1, 4, p53, 6), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(1, 4, p53 + 1, 7), 1).0, Ok);
    assert_eq!(one(&mut g, bid(1, 5, p53 + 1, 8), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(1, 5, p53 + 2, 9), 1).0, Ok);

    // An increment above 2^53, and one that lands exactly on u64::MAX.
    let inc = (1u64 << 60) + 3;
    one(&mut g, open(2, 0, inc, 0), 1);
    assert_eq!(one(&mut g, bid(2, 1, inc - 1, 1), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(2, 1, inc, 2), 1).0, Ok);
    assert_eq!(one(&mut g, bid(2, 2, 2 * inc - 1, 3), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(2, 2, 2 * inc, 4), 1).0, Ok);
    let top = u64::MAX - inc;
    assert_eq!(one(&mut g, bid(2, 3, top, 5), 1).0, Ok);
    assert_eq!(one(&mut g, bid(2, 4, u64::MAX - 1, 6), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(2, 4, u64::MAX, 7), 1).0, Ok);
    assert_eq!(
        one(&mut g, bid(2, 5, u64::MAX, 8), 1),
        (Outbid, u64::MAX, 4, false)
    );

    // The reserve above the first step, and a reserve of u64::MAX.
    one(&mut g, open(3, 1_000, 1, 0), 1);
    assert_eq!(one(&mut g, bid(3, 1, 999, 1), 1).0, BelowReserve);
    assert_eq!(one(&mut g, bid(3, 1, 1_000, 2), 1).0, Ok);
    assert_eq!(one(&mut g, bid(3, 2, 1_000, 3), 1).0, Outbid);
    assert_eq!(one(&mut g, bid(3, 2, 999, 4), 1).0, BelowReserve);
    one(&mut g, open(4, u64::MAX, 0, 0), 1);
    assert_eq!(one(&mut g, bid(4, 1, u64::MAX - 1, 1), 1).0, BelowReserve);
    assert_eq!(one(&mut g, bid(4, 1, u64::MAX, 2), 1).0, Ok);
    assert_eq!(one(&mut g, bid(4, 2, u64::MAX, 3), 1).0, Outbid);
}

/// The contract's bid rules, as plainly as they can be written.
#[derive(Default)]
struct Model {
    reserve: u64,
    inc: u64,
    ends: u64,
    high: u64,
    bidder: u64,
    count: u64,
    closed: bool,
    /// Accepted keys: bid_id -> (bidder, amount).
    keys: std::collections::HashMap<u64, (u64, u64)>,
}

impl Model {
    fn bid(&mut self, bidder: u64, amount: u64, id: u64, now: u64) -> OpResult {
        let out = |status, value, aux, replayed| OpResult::Outcome {
            result: gavel_protocol::ResultPayload::new(status, value, aux),
            replayed,
            bid_count: 0,
            ends_ms: 0,
        };
        if let Some(&(b, a)) = self.keys.get(&id) {
            return if (b, a) == (bidder, amount) {
                out(Status::Ok, a, b, true)
            } else {
                OpResult::Conflict
            };
        }
        if self.closed || (self.ends != 0 && now >= self.ends) {
            self.closed = true;
            return out(Status::Closed, self.high, self.bidder, false);
        }
        if amount < self.reserve {
            return out(Status::BelowReserve, self.high, self.bidder, false);
        }
        match self.high.checked_add(self.inc.max(1)) {
            Some(needed) if amount >= needed => {}
            _ => return out(Status::Outbid, self.high, self.bidder, false),
        }
        self.high = amount;
        self.bidder = bidder;
        self.count += 1;
        self.keys.insert(id, (bidder, amount));
        out(Status::Ok, amount, bidder, false)
    }
}

/// Random auctions and bids (amounts around 2^53 and u64::MAX, ties, time
/// running past ends, retries with the same and with other fields), sent in
/// pipelined batches, answered as the model answers.
#[test]
fn random_bids_match_the_model() {
    let r = RedisServer::start();
    let mut g = connect(&[r.url()], false);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let bases = [0u64, 1_000, (1 << 53) - 40, u64::MAX - 200];
    let mut models: Vec<Model> = Vec::new();
    let mut opens = Vec::new();
    for id in 0..12u64 {
        let base = bases[(id % 4) as usize];
        let m = Model {
            reserve: base + rnd(30),
            inc: [0, 1, 7, 1 << 54][rnd(4) as usize],
            ends: if rnd(3) == 0 { 0 } else { 500 + rnd(3_000) },
            ..Model::default()
        };
        opens.push(open(id + 1, m.reserve, m.inc, m.ends));
        models.push(m);
    }
    g.execute(&opens, 1).unwrap();
    let mut sent: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    let mut now = 1u64;
    for _ in 0..60 {
        now += rnd(80);
        let mut ops = Vec::new();
        let mut want = Vec::new();
        for _ in 0..40 {
            let mut a = rnd(12);
            let (bidder, amount, id) = if !sent.is_empty() && rnd(4) == 0 {
                // A retry: the same fields, or a conflicting amount.
                let (sa, b, amt, id) = sent[rnd(sent.len() as u64) as usize];
                a = sa - 1;
                (b, if rnd(3) == 0 { amt ^ 1 } else { amt }, id)
            } else {
                let m = &models[a as usize];
                let amount = match rnd(4) {
                    0 => m.high,
                    1 => m.high.saturating_add(m.inc.max(1)),
                    2 => m.high.saturating_add(rnd(60)),
                    _ => bases[(a % 4) as usize].saturating_add(rnd(300)),
                };
                (1 + rnd(9), amount, 1 + rnd(1 << 40))
            };
            sent.push((a + 1, bidder, amount, id));
            ops.push(bid(a + 1, bidder, amount, id));
            want.push(models[a as usize].bid(bidder, amount, id, now));
        }
        let got = g.execute(&ops, now).unwrap();
        for ((op, got), want) in ops.iter().zip(got).zip(want) {
            let kind = match want {
                OpResult::Outcome {
                    result, replayed, ..
                } => format!(
                    "{:?}{}",
                    result.status,
                    if replayed { " replayed" } else { "" }
                ),
                ref other => format!("{other:?}"),
            };
            *seen.entry(kind).or_insert(0u32) += 1;
            let got = match got {
                OpResult::Outcome {
                    result, replayed, ..
                } => OpResult::Outcome {
                    result,
                    replayed,
                    bid_count: 0,
                    ends_ms: 0,
                },
                other => other,
            };
            assert_eq!(got, want, "{op:?} at {now}");
        }
    }
    for kind in [
        "Ok",
        "Ok replayed",
        "Outbid",
        "BelowReserve",
        "Closed",
        "Conflict",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 5,
            "{kind}: {seen:?}"
        );
    }
    let reads: Vec<Op> = (1..=12).map(Op::GetAuction).collect();
    for (res, m) in g.execute(&reads, now).unwrap().iter().zip(&models) {
        match res {
            OpResult::Auction(Some(a)) => {
                assert_eq!(
                    (a.high_bid, a.high_bidder, a.bid_count),
                    (m.high, m.bidder, m.count)
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
