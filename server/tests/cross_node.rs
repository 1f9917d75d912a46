//! Cross-node mode: several gavel-server processes on one Redis (and on a
//! 3-master Redis Cluster), each bid and purchase one Lua compare-and-set.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use gavel_protocol::{Client, ClientError, ErrorCode, Push, Response, Status};
use gavel_testkit::redis::{RedisCluster, RedisServer};

fn nodes(redis_args: &[String]) -> Vec<Server> {
    (0..3)
        .map(|i| {
            let node = i.to_string();
            let mut args: Vec<&str> = redis_args.iter().map(|s| s.as_str()).collect();
            args.extend(["--node-id", &node, "--store", "memory"]);
            Server::start(&args)
        })
        .collect()
}

/// 300 bidders on one auction and 300 buyers on 100 units, spread over the
/// three nodes; idempotent retries sent to another node replay.
fn contention_across_nodes(redis_args: &[String]) {
    let ns = nodes(redis_args);
    let addrs: Vec<_> = ns.iter().map(|s| s.addr).collect();
    let mut c0 = ns[0].client();
    assert_eq!(
        c0.open_auction(1, 0, 1, 0).unwrap().result.status,
        Status::Ok
    );
    assert_eq!(
        c0.open_sale(1, 100, 0, 0, 0).unwrap().result.status,
        Status::Ok
    );
    let amount_of = |who: u64| 1_000 + (who * 7_919) % 100_000;
    let threads: Vec<_> = (1..=300u64)
        .map(|who| {
            let addr = addrs[(who % 3) as usize];
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                c.set_timeout(Some(Duration::from_secs(20))).unwrap();
                let b = c.bid(1, who, amount_of(who), who).unwrap().result;
                let s = c.buy(1, who, 1, who).unwrap().result;
                assert!(matches!(s.status, Status::Ok | Status::SoldOut), "{s:?}");
                (b.status == Status::Ok, s.status == Status::Ok)
            })
        })
        .collect();
    let (mut bids_ok, mut sold) = (0u64, 0u64);
    let mut bought = vec![false];
    for t in threads {
        let (b, s) = t.join().unwrap();
        bids_ok += b as u64;
        sold += s as u64;
        bought.push(s);
    }
    let mut c1 = ns[1].client();
    let a = c1.get_auction(1).unwrap().unwrap();
    let top = (1..=300u64).map(amount_of).max().unwrap();
    let winner = (1..=300u64).find(|w| amount_of(*w) == top).unwrap();
    assert_eq!(
        (a.high_bid, a.high_bidder),
        (top, winner),
        "one winner: the maximum sent"
    );
    assert_eq!(a.bid_count, bids_ok, "bid_count = total OKs across nodes");
    assert_eq!(sold, 100, "exactly the stock was sold");
    assert_eq!(c1.get_sale(1).unwrap().unwrap().sold, 100);

    // The winning bid was sent to node winner % 3; retry it on another node.
    let other = ((winner + 1) % 3) as usize;
    let mut c = ns[other].client();
    let again = c.bid(1, winner, top, winner).unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.result.status, Status::Ok);
    assert_eq!((again.result.value, again.result.aux), (top, winner));
    // A purchase replays if it was OK; a rejected one (SOLD_OUT) kept no
    // key and is evaluated afresh (sold out still).
    let buy_again = c.buy(1, winner, 1, winner).unwrap();
    if bought[winner as usize] {
        assert!(buy_again.replayed, "{buy_again:?}");
    } else {
        assert!(!buy_again.replayed, "{buy_again:?}");
        assert_eq!(buy_again.result.status, Status::SoldOut);
    }
    // Same key, other fields: a conflict wherever it is sent.
    match c.bid(1, winner, top + 1, winner) {
        Err(ClientError::Server {
            code: ErrorCode::IdempotencyConflict,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// A subscriber on node A sees the bids accepted on node C.
fn fan_out_across_nodes(redis_args: &[String]) {
    let ns = nodes(redis_args);
    let mut c = ns[2].client();
    c.open_auction(9, 0, 1, 0).unwrap();
    let mut sub = ns[0].client();
    assert_eq!(sub.subscribe(9).unwrap().result.status, Status::Ok);
    sub.set_timeout(Some(Duration::from_millis(200))).unwrap();
    // Node A's listener subscribes to Redis at start; bid until an update
    // arrives (bounded), then check it carries a bid made on node C.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = HashSet::new();
    let mut amount = 0;
    let got = loop {
        amount += 10;
        assert_eq!(
            c.bid(9, 42, amount, amount).unwrap().result.status,
            Status::Ok
        );
        sent.insert(amount);
        match sub.next_push() {
            Ok(p) => break p,
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(Instant::now() < deadline, "no update reached node A");
            }
            Err(e) => panic!("{e}"),
        }
    };
    match got {
        Push::BidUpdate {
            auction_id: 9,
            high_bid,
            high_bidder: 42,
            ..
        } => assert!(sent.contains(&high_bid)),
        other => panic!("{other:?}"),
    }
    // Closing on node C reaches the subscriber on node A too.
    sub.set_timeout(Some(Duration::from_secs(10))).unwrap();
    c.close_auction(9).unwrap();
    loop {
        match sub.next_push().unwrap() {
            Push::AuctionClosed {
                auction_id: 9,
                winning_bid,
                winner: 42,
            } => {
                assert_eq!(winning_bid, amount);
                break;
            }
            Push::BidUpdate { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
}

fn single(r: &RedisServer) -> Vec<String> {
    vec!["--redis".into(), r.url()]
}

fn cluster(c: &RedisCluster) -> Vec<String> {
    vec!["--redis-cluster".into(), c.urls().join(",")]
}

#[test]
fn three_nodes_one_redis_contention_and_replay() {
    let r = RedisServer::start();
    contention_across_nodes(&single(&r));
}

#[test]
fn three_nodes_one_redis_fan_out() {
    let r = RedisServer::start();
    fan_out_across_nodes(&single(&r));
}

#[test]
fn three_nodes_redis_cluster_contention_and_replay() {
    let c = RedisCluster::start();
    contention_across_nodes(&cluster(&c));
}

#[test]
fn three_nodes_redis_cluster_fan_out() {
    let c = RedisCluster::start();
    fan_out_across_nodes(&cluster(&c));
}

/// Redis down for 3 s under load: UNAVAILABLE for bids never sent (their
/// retry is evaluated afresh), IN_DOUBT for bids sent whose answer was lost
/// (their retry tells), never OK without Redis, never a hang; then service
/// resumes by itself; nothing acknowledged is missing.
#[test]
fn redis_outage_gives_unavailable_or_in_doubt_then_recovers() {
    // AOF with fsync on every write: what Redis acknowledged survives SIGKILL.
    let mut r = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let s = Server::start(&[
        "--redis",
        &r.url(),
        "--store",
        "memory",
        "--redis-timeout",
        "500ms",
    ]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = s.addr;
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(addr).unwrap();
            c.set_timeout(Some(Duration::from_secs(10))).unwrap();
            let (mut acked, mut refused, mut in_doubt) = (Vec::new(), Vec::new(), Vec::new());
            let mut slowest = Duration::ZERO;
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let t = Instant::now();
                match c.bid(1, 7, id * 10, id) {
                    Ok(o) => {
                        assert_eq!(o.result.status, Status::Ok, "{o:?}");
                        acked.push(id);
                    }
                    Err(ClientError::Server {
                        code: ErrorCode::Unavailable,
                        ..
                    }) => refused.push(id),
                    // Sent to Redis, answer lost: the script may have run.
                    Err(ClientError::Server {
                        code: ErrorCode::InDoubt,
                        ..
                    }) => in_doubt.push(id),
                    Err(e) => panic!("{e}"),
                }
                slowest = slowest.max(t.elapsed());
            }
            (acked, refused, in_doubt, slowest)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get_auction(1).unwrap().unwrap().bid_count < 200 {
        assert!(Instant::now() < deadline, "no progress before the outage");
    }
    r.stop();
    std::thread::sleep(Duration::from_secs(3));
    r.restart();
    // Resumes by itself (each shard reconnects on its own backoff): poll the
    // auction's shard, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        match c.get_auction(1) {
            Ok(a) => {
                assert!(a.is_some(), "the AOF kept the auction");
                break;
            }
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => {
                assert!(
                    Instant::now() < deadline,
                    "no recovery within 30 s ({n} tries)"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, refused, in_doubt, slowest) = load.join().unwrap();
    assert!(!refused.is_empty(), "the outage was visible as UNAVAILABLE");
    assert!(
        slowest < Duration::from_secs(5),
        "a request waited {slowest:?}"
    );
    // Everything acknowledged is in Redis: each replays OK.
    let last = *acked.last().unwrap();
    assert!(c.get_auction(1).unwrap().unwrap().high_bid >= last * 10);
    for id in acked.iter().rev().take(300) {
        let o = c.bid(1, 7, id * 10, *id).unwrap();
        assert!(
            o.replayed && o.result.status == Status::Ok,
            "bid {id}: {o:?}"
        );
    }
    // UNAVAILABLE means not executed: the retry is evaluated afresh.
    for (id, f) in retry_bids(&mut c, &refused) {
        assert!(
            !f.replayed(),
            "bid {id} answered UNAVAILABLE had run: {f:?}"
        );
    }
    // IN_DOUBT resolves on retry: a RESULT (replayed OK if it had run).
    for (id, f) in retry_bids(&mut c, &in_doubt) {
        let Response::Result(r) = f.body else {
            panic!("bid {id} in doubt: {f:?}")
        };
        assert!(!f.replayed() || r.status == Status::Ok, "bid {id}: {f:?}");
    }
}

/// Resends bids `1, 7, id * 10, id` on auction 1, pipelined; their replies.
fn retry_bids(c: &mut Client, ids: &[u64]) -> Vec<(u64, gavel_protocol::Frame<Response>)> {
    let mut out = Vec::new();
    for chunk in ids.chunks(1000) {
        let mut sent = std::collections::HashMap::new();
        for &id in chunk {
            let req = gavel_protocol::Request::Bid(gavel_protocol::BidRequest {
                auction_id: 1,
                bidder_id: 7,
                amount: id * 10,
                bid_id: id,
            });
            sent.insert(c.send(&req), id);
        }
        c.flush().unwrap();
        for _ in 0..chunk.len() {
            let f = c.recv().unwrap();
            out.push((sent[&f.request_id], f));
        }
    }
    out
}

/// A node on `r` with the OUTBID filter on.
fn filter_node(r: &RedisServer) -> Server {
    Server::start(&[
        "--redis",
        &r.url(),
        "--store",
        "memory",
        "--outbid-filter",
        "true",
    ])
}

/// With --outbid-filter, a bid below the known high bid is answered OUTBID
/// by the node itself, with the high bid it knows; winning bids still go to
/// Redis. The documented cost: a retried, since-outbid bid is not replayed.
#[test]
fn outbid_filter_answers_locally() {
    let r = RedisServer::start();
    let s = filter_node(&r);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    assert_eq!(c.bid(1, 1, 100, 1).unwrap().result.status, Status::Ok);
    // Same auction, one write: a bid that needs Redis, then one the filter
    // answers locally. Replies keep the order the requests were sent in.
    let first = c.send(&gavel_protocol::Request::Bid(gavel_protocol::BidRequest {
        auction_id: 1,
        bidder_id: 3,
        amount: 200,
        bid_id: 10,
    }));
    let second = c.send(&gavel_protocol::Request::Bid(gavel_protocol::BidRequest {
        auction_id: 1,
        bidder_id: 4,
        amount: 50,
        bid_id: 11,
    }));
    c.flush().unwrap();
    assert_eq!(
        c.recv().unwrap().request_id,
        first,
        "the Redis answer comes first"
    );
    assert_eq!(c.recv().unwrap().request_id, second);
    // Make Redis unreachable: only a locally answered bid can still succeed.
    drop(r);
    let o = c.bid(1, 2, 50, 2).unwrap();
    assert_eq!(
        (o.result.status, o.result.value, o.result.aux),
        (Status::Outbid, 200, 3)
    );
    match c.bid(1, 2, 500, 3) {
        Err(ClientError::Server {
            code: ErrorCode::Unavailable,
            ..
        }) => {}
        other => panic!("a bid that may win needs Redis: {other:?}"),
    }
}

/// Milliseconds since the Unix epoch, the clock auctions end by.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// SUBSCRIBE, repeated while the node answers UNAVAILABLE (its update
/// channel is not subscribed yet, e.g. right after it started).
fn subscribe_once_live(sub: &mut Client, auction: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sub.subscribe(auction) {
            Ok(o) => {
                assert_eq!(o.result.status, Status::Ok);
                return;
            }
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => assert!(Instant::now() < deadline, "SUBSCRIBE never became OK"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Bids on `auction` through `bidder` (amounts rising from `amount`) until
/// one of those bids reaches `sub`, a subscriber on another node: that
/// node's update channel is then live. Returns the last amount bid.
fn until_update_channel_live(
    sub: &mut Client,
    bidder: &mut Client,
    auction: u64,
    mut amount: u64,
) -> u64 {
    sub.set_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        amount += 10;
        assert!(
            Instant::now() < deadline,
            "the update channel was not live in time"
        );
        let o = bidder.bid(auction, 7, amount, amount).unwrap();
        assert_eq!(o.result.status, Status::Ok);
        match sub.next_push() {
            Ok(Push::BidUpdate { .. }) => break,
            Ok(other) => panic!("{other:?}"),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    sub.set_timeout(Some(Duration::from_secs(10))).unwrap();
    amount
}

/// How many EVALSHA calls Redis has executed. Panics when INFO has no
/// count for it: a herd that no longer reaches Redis through EVALSHA would
/// otherwise count as zero and pass "Redis was spared" without checking it.
fn evalsha_calls(port: u16) -> u64 {
    let info = gavel_testkit::redis::raw_command(port, "INFO commandstats").expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no EVALSHA count in INFO commandstats:\n{info}"))
}

/// A herd on one hot auction: 100 bidders per node, each pipelining bids
/// one step above the price its last reply showed. With --outbid-filter the
/// nodes answer most of them themselves (bids below the known high, or below
/// a bid already sent), yet every answer is one Redis would have given: each
/// OUTBID is for a bid that could not beat the high bid it reports, and the
/// OKs are exactly the auction's bid_count, the highest of them its high bid.
fn herd_against_the_filter(nodes: usize) {
    let r = RedisServer::start();
    let servers: Vec<Server> = (0..nodes).map(|_| filter_node(&r)).collect();
    let mut c = servers[0].client();
    c.open_auction(1, 0, 1, 0).unwrap();
    assert_eq!(c.bid(1, 1000, 1, 1).unwrap().result.status, Status::Ok);
    let calls_before = evalsha_calls(r.port());
    let price = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let bidders = 100 * nodes as u64;
    const ROUNDS: u64 = 10;
    const PIPELINE: u64 = 8;
    let handles: Vec<_> = (0..bidders)
        .map(|b| {
            let (addr, price) = (servers[b as usize % nodes].addr, price.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                let mut oks = Vec::new();
                for round in 0..ROUNDS {
                    let seen = price.load(Ordering::Relaxed);
                    let mut sent = Vec::new();
                    for i in 0..PIPELINE {
                        let amount = seen + 1 + (b + i) % 3;
                        let bid_id = (b + 1) << 20 | (round * PIPELINE + i + 1);
                        let req = gavel_protocol::BidRequest {
                            auction_id: 1,
                            bidder_id: b + 1,
                            amount,
                            bid_id,
                        };
                        sent.push((c.send(&gavel_protocol::Request::Bid(req)), amount));
                    }
                    c.flush().unwrap();
                    for (id, amount) in sent {
                        let f = c.recv().unwrap();
                        assert_eq!(f.request_id, id, "replies in request order");
                        let gavel_protocol::Response::Result(r) = f.body else {
                            panic!("bid {amount} answered {:?}", f.body)
                        };
                        match r.status {
                            Status::Ok => {
                                assert_eq!((r.value, r.aux), (amount, b + 1));
                                oks.push(amount);
                            }
                            // Ties lose, increment 1: outbid means the high
                            // bid it reports is at least the bid.
                            Status::Outbid => assert!(
                                r.value >= amount,
                                "OUTBID for {amount} reports high {}",
                                r.value
                            ),
                            other => panic!("bid {amount}: {other:?}"),
                        }
                        price.fetch_max(r.value, Ordering::Relaxed);
                    }
                }
                oks
            })
        })
        .collect();
    let oks: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let info = c.get_auction(1).unwrap().unwrap();
    assert_eq!(
        info.bid_count,
        oks.len() as u64 + 1,
        "every OK counted once"
    );
    assert_eq!(Some(info.high_bid), oks.iter().copied().max());
    let sent = bidders * ROUNDS * PIPELINE;
    let executed = evalsha_calls(r.port()) - calls_before;
    // Each OK was decided by the script (one EVALSHA per bid that reaches
    // Redis), so the count must see at least those.
    assert!(
        executed >= oks.len() as u64,
        "{} bids were accepted but Redis counted {executed} EVALSHA calls",
        oks.len()
    );
    assert!(
        executed < sent / 2,
        "the filter should spare Redis most of a herd: {executed} of {sent} bids reached it"
    );
}

#[test]
fn outbid_filter_turns_away_a_herd_and_stays_exact() {
    herd_against_the_filter(1);
}

#[test]
fn outbid_filter_stays_exact_with_three_nodes_on_one_auction() {
    herd_against_the_filter(3);
}

/// The filter never answers for an auction that is over: past its end time,
/// or closed on another node (learned from the update channel), a bid below
/// the known high gets CLOSED, as Redis would answer.
#[test]
fn outbid_filter_stops_at_close_and_end() {
    let r = RedisServer::start();
    let (a, b) = (filter_node(&r), filter_node(&r));
    let mut ca = a.client();
    let mut cb = b.client();
    // Closed on node B while node A knows the high bid.
    ca.open_auction(1, 0, 1, 0).unwrap();
    let mut sub = a.client();
    assert_eq!(sub.subscribe(1).unwrap().result.status, Status::Ok);
    let high = until_update_channel_live(&mut sub, &mut ca, 1, 100);
    let o = ca.bid(1, 8, 50, 1);
    assert_eq!(o.unwrap().result.status, Status::Outbid);
    assert_eq!(cb.close_auction(1).unwrap().result.status, Status::Ok);
    loop {
        match sub.next_push().unwrap() {
            Push::AuctionClosed { auction_id: 1, .. } => break,
            Push::BidUpdate { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    let o = ca.bid(1, 8, 60, 3).unwrap();
    assert_eq!((o.result.status, o.result.value), (Status::Closed, high));

    // Past its end time: the node learned the end from a bid's reply.
    let ends = wall_ms() + 400;
    ca.open_auction(2, 0, 1, ends).unwrap();
    assert_eq!(ca.bid(2, 7, 100, 1).unwrap().result.status, Status::Ok);
    assert_eq!(ca.bid(2, 8, 50, 2).unwrap().result.status, Status::Outbid);
    // Waiting for the clock to pass the end is the behaviour under test.
    while wall_ms() <= ends + 5 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = ca.bid(2, 8, 60, 3).unwrap();
    assert_eq!((o.result.status, o.result.value), (Status::Closed, 100));
}

/// An auction that reaches its end with nobody bidding is still closed in
/// Redis mode: the node whose connection watches it touches it once the end
/// has passed, and the closing reaches subscribers on every node.
#[test]
fn watched_auction_closes_at_its_end_without_a_bid() {
    let r = RedisServer::start();
    let args = ["--redis", &r.url(), "--store", "memory"];
    let (a, b) = (Server::start(&args), Server::start(&args));
    let mut cb = b.client();
    // Room for the update channel to come up on a loaded machine first.
    let ends = wall_ms() + 6_000;
    cb.open_auction(1, 0, 1, ends).unwrap();
    let mut sub = a.client();
    assert_eq!(sub.subscribe(1).unwrap().result.status, Status::Ok);
    // Once node A's update channel is live, nobody bids again.
    let amount = until_update_channel_live(&mut sub, &mut cb, 1, 0);
    assert!(
        wall_ms() < ends,
        "the update channel was live only after the end"
    );
    loop {
        match sub.next_push().unwrap() {
            Push::BidUpdate { .. } => continue,
            Push::AuctionClosed {
                auction_id: 1,
                winning_bid,
                winner: 7,
            } => {
                assert_eq!(winning_bid, amount);
                assert!(wall_ms() >= ends, "closed before its end");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let info = cb.get_auction(1).unwrap().unwrap();
    assert_eq!(info.state, gavel_protocol::AuctionState::Closed);
}

/// Redis refusing commands while a slow script runs (`-BUSY`) is ERROR
/// BUSY for the requests it refused (not executed, back off), and the node
/// goes on once the script is gone. `password` selects the synchronous
/// client (a URL with credentials) instead of the pipelined connection.
fn busy_redis_gives_error_busy(password: Option<&str>) {
    let mut args = vec!["--busy-reply-threshold", "50"];
    if let Some(pw) = password {
        args.extend(["--requirepass", pw]);
    }
    let r = RedisServer::start_with(&args);
    let url = match password {
        Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", r.port()),
        None => r.url(),
    };
    let raw = |cmd: &str| match password {
        Some(pw) => gavel_testkit::redis::raw_command_auth(r.port(), pw, cmd),
        None => gavel_testkit::redis::raw_command(r.port(), cmd),
    };
    let s = Server::start(&["--redis", &url, "--store", "memory"]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    assert_eq!(c.bid(1, 7, 10, 1).unwrap().result.status, Status::Ok);
    // A script that never ends, on its own connection (no reply expected).
    let mut hog = std::net::TcpStream::connect(("127.0.0.1", r.port())).unwrap();
    if let Some(pw) = password {
        std::io::Write::write_all(&mut hog, format!("AUTH {pw}\r\n").as_bytes()).unwrap();
    }
    std::io::Write::write_all(
        &mut hog,
        b"EVAL \"local i = 0 while true do i = i + 1 end\" 0\r\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !raw("PING").is_some_and(|p| p.starts_with("-BUSY")) {
        assert!(Instant::now() < deadline, "redis never became busy");
    }
    match c.bid(1, 7, 20, 2) {
        Err(ClientError::Server {
            code: ErrorCode::Busy,
            ..
        }) => {}
        other => panic!("expected ERROR BUSY, got {other:?}"),
    }
    let killed = raw("SCRIPT KILL").unwrap();
    assert!(killed.starts_with("+OK"), "{killed}");
    // The kill lands at the script's next check: until then, still BUSY.
    // The refused bid was not executed: its retry is a first execution.
    let deadline = Instant::now() + Duration::from_secs(10);
    let o = loop {
        match c.bid(1, 7, 20, 2) {
            Err(ClientError::Server {
                code: ErrorCode::Busy,
                ..
            }) => assert!(Instant::now() < deadline, "still BUSY after SCRIPT KILL"),
            other => break other.unwrap(),
        }
    };
    assert_eq!((o.result.status, o.replayed), (Status::Ok, false));
}

#[test]
fn redis_busy_with_a_slow_script_is_error_busy() {
    busy_redis_gives_error_busy(None);
}

#[test]
fn redis_busy_is_error_busy_on_the_synchronous_client_too() {
    busy_redis_gives_error_busy(Some("s3cret"));
}

/// A SUBSCRIBE answered OK means the node's update channel is live: the
/// very next bid made on another node reaches the subscriber (until the
/// channel is up, right after the node starts, SUBSCRIBE is UNAVAILABLE).
#[test]
fn subscribe_ok_means_updates_arrive() {
    let r = RedisServer::start();
    let args = ["--redis", &r.url(), "--store", "memory"];
    let b = Server::start(&args);
    let mut cb = b.client();
    cb.open_auction(1, 0, 1, 0).unwrap();
    let a = Server::start(&args);
    let mut sub = a.client();
    subscribe_once_live(&mut sub, 1);
    assert_eq!(cb.bid(1, 7, 10, 1).unwrap().result.status, Status::Ok);
    sub.set_timeout(Some(Duration::from_secs(10))).unwrap();
    match sub.next_push().unwrap() {
        Push::BidUpdate {
            auction_id: 1,
            high_bid: 10,
            high_bidder: 7,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

/// /readyz says 503 while Redis is unreachable or the node's update channel
/// is down (a load balancer should send clients elsewhere), 200 once both
/// are back, without a restart of the node.
#[test]
fn readyz_follows_redis() {
    let mut r = RedisServer::start();
    let url = r.url();
    let s = Server::start(&["--redis", &url, "--metrics-listen", "127.0.0.1:0"]);
    let wait_for = |want: u16, probe: &mut dyn FnMut()| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            probe();
            let (code, body) = s.http_get("/readyz");
            if code == want {
                return body;
            }
            assert!(Instant::now() < deadline, "/readyz stayed {code}: {body}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut c = s.client();
    wait_for(200, &mut || {});
    r.stop();
    // A request that needs Redis finds it gone.
    let body = wait_for(503, &mut || {
        let _ = c.get_auction(1);
    });
    assert!(body.contains("redis"), "{body}");
    r.restart();
    wait_for(200, &mut || {
        let _ = c.get_auction(1);
    });
    assert!(c.get_auction(1).is_ok(), "redis answers again");
}

/// A closing whose publication a node missed (here: closed in Redis with no
/// PUBLISH at all, as when it happens while the node's listener reconnects)
/// still reaches its subscribers: the sweep's read past the end finds the
/// auction closed and the node pushes AUCTION_CLOSED itself.
#[test]
fn sweep_pushes_a_closing_the_update_channel_missed() {
    let r = RedisServer::start();
    let s = Server::start(&["--redis", &r.url(), "--store", "memory"]);
    let mut c = s.client();
    let ends = wall_ms() + 1_000;
    c.open_auction(1, 0, 1, ends).unwrap();
    assert_eq!(c.bid(1, 7, 10, 1).unwrap().result.status, Status::Ok);
    let mut sub = s.client();
    subscribe_once_live(&mut sub, 1);
    let set = gavel_testkit::redis::raw_command(r.port(), "HSET gavel:{a:1} closed 1").unwrap();
    assert!(set.starts_with(':'), "{set}");
    sub.set_timeout(Some(Duration::from_secs(10))).unwrap();
    match sub.next_push().unwrap() {
        Push::AuctionClosed {
            auction_id: 1,
            winning_bid: 10,
            winner: 7,
        } => assert!(wall_ms() >= ends),
        other => panic!("{other:?}"),
    }
}

/// `gavel_cross_node_updates_received_total` of a node.
fn updates_received(s: &Server) -> u64 {
    let (code, body) = s.http_get("/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("gavel_cross_node_updates_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no updates counter in:\n{body}"))
}

/// Per-auction channels on a 3-master cluster: a subscriber on node A gets
/// the bids placed through node B (its SUBSCRIBE is answered once A's
/// listener holds the auction's shard channel, so the very next bid reaches
/// it), while node B, whose clients watch nothing, receives no update at
/// all; auctions nobody watches cost node A nothing either.
#[test]
fn per_auction_channels_reach_only_the_nodes_that_watch() {
    let c = RedisCluster::start();
    let urls = c.urls().join(",");
    let args = [
        "--redis-cluster",
        &urls,
        "--store",
        "memory",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let (a, b) = (Server::start(&args), Server::start(&args));
    let mut cb = b.client();
    // Auctions over every master; the subscriber watches the first ten.
    for id in 1..=30 {
        assert_eq!(
            cb.open_auction(id, 0, 1, 0).unwrap().result.status,
            Status::Ok
        );
    }
    let mut sub = a.client();
    for id in 1..=10 {
        subscribe_once_live(&mut sub, id);
    }
    sub.set_timeout(Some(Duration::from_secs(10))).unwrap();
    for id in 1..=30 {
        assert_eq!(cb.bid(id, 7, 10, id).unwrap().result.status, Status::Ok);
    }
    let mut seen = HashSet::new();
    while seen.len() < 10 {
        match sub.next_push().unwrap() {
            Push::BidUpdate {
                auction_id,
                high_bid: 10,
                high_bidder: 7,
                bid_count: 1,
            } => assert!(seen.insert(auction_id) && auction_id <= 10, "{auction_id}"),
            other => panic!("{other:?}"),
        }
    }
    // Closings reach the subscriber too, and end its subscriptions.
    for id in 1..=30 {
        cb.close_auction(id).unwrap();
    }
    let mut closed = HashSet::new();
    while closed.len() < 10 {
        match sub.next_push().unwrap() {
            Push::AuctionClosed { auction_id, .. } => {
                assert!(
                    closed.insert(auction_id) && auction_id <= 10,
                    "{auction_id}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
    // Node A got the ten bids and ten closings it watched, nothing of the
    // other twenty auctions; node B nothing at all. A's last closing may be
    // counted a moment after it was pushed: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while updates_received(&a) < 20 {
        assert!(
            Instant::now() < deadline,
            "node A counted {}",
            updates_received(&a)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(updates_received(&a), 20);
    assert_eq!(updates_received(&b), 0, "node B watches nothing");
    // An auction opened afterwards and bid on through A: still nothing for B.
    let mut ca = a.client();
    ca.open_auction(31, 0, 1, 0).unwrap();
    assert_eq!(ca.bid(31, 7, 10, 1).unwrap().result.status, Status::Ok);
    assert_eq!(updates_received(&a), 20, "nobody watches auction 31");
    assert_eq!(updates_received(&b), 0);
}

/// What one bid of the paused-master test came back with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Got {
    Result(Status, bool),
    Unavailable,
    InDoubt,
}

/// One bid of the paused-master test: (auction, amount, bid_id), when it
/// was sent and answered, and the answer.
#[derive(Debug, Clone, Copy)]
struct Sent {
    auction: u64,
    amount: u64,
    bid_id: u64,
    at: Instant,
    answered: Instant,
    got: Got,
}

/// Whether each of `auctions` accepted a bid sent at `since` or later.
fn took_a_bid(log: &[Sent], since: Instant, mut auctions: impl Iterator<Item = u64>) -> bool {
    let took: HashSet<u64> = log
        .iter()
        .filter(|b| b.at >= since && b.got == Got::Result(Status::Ok, false))
        .map(|b| b.auction)
        .collect();
    auctions.all(|a| took.contains(&a))
}

fn bid_got(c: &mut Client, auction: u64, amount: u64, bid_id: u64) -> Got {
    match c.bid(auction, auction + 1_000, amount, bid_id) {
        Ok(o) => Got::Result(o.result.status, o.replayed),
        Err(ClientError::Server {
            code: ErrorCode::Unavailable,
            ..
        }) => Got::Unavailable,
        Err(ClientError::Server {
            code: ErrorCode::InDoubt,
            ..
        }) => Got::InDoubt,
        Err(e) => panic!("bid {bid_id} on auction {auction}: {e}"),
    }
}

/// One master of a 3-master cluster stops answering (SIGSTOP: its socket
/// still accepts, nothing comes back) while bids flow over auctions on
/// every master: the auctions on the two others keep getting RESULTs, those
/// on the stopped one get UNAVAILABLE or IN_DOUBT, each answer within
/// --redis-timeout plus slack; once it runs again its auctions are served
/// again without a restart. Every IN_DOUBT bid's retry is a RESULT, no
/// UNAVAILABLE bid had run (its retry is no replay), and each auction's
/// high bid is the highest bid acknowledged.
#[test]
fn a_stopped_cluster_master_fails_only_its_auctions() {
    let began = Instant::now();
    let mut rc = RedisCluster::start();
    let urls = rc.urls();
    let timeout = Duration::from_millis(1_000);
    let s = Server::start(&[
        "--redis-cluster",
        &urls.join(","),
        "--store",
        "memory",
        "--redis-timeout",
        "1s",
    ]);
    let map = gavel_redis::RedisGavel::cluster_slots(&urls, Duration::from_secs(5)).unwrap();
    let stopped_port = format!(":{}", rc.ports()[0]);
    let auctions: Vec<u64> = (1..=48).collect();
    let on_stopped: HashSet<u64> = auctions
        .iter()
        .copied()
        .filter(|&id| {
            let slot = gavel_redis::scripts::slot(&gavel_redis::Op::GetAuction(id));
            map.iter().any(|(a, b, url)| {
                (*a..=*b).contains(&slot) && url.ends_with(stopped_port.as_str())
            })
        })
        .collect();
    assert!(
        !on_stopped.is_empty() && on_stopped.len() < auctions.len() / 2,
        "{} of {} auctions on the master to stop",
        on_stopped.len(),
        auctions.len()
    );
    let mut c = s.client();
    for &id in &auctions {
        assert_eq!(
            c.open_auction(id, 0, 1, 0).unwrap().result.status,
            Status::Ok
        );
    }
    let log: Arc<std::sync::Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (log, stop, addr) = (log.clone(), stop.clone(), s.addr);
            let mine: Vec<u64> = auctions.iter().copied().filter(|id| id % 4 == t).collect();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                // Past this, a request hangs: the read fails and so does the test.
                c.set_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    for &auction in &mine {
                        let at = Instant::now();
                        let got = bid_got(&mut c, auction, k * 10, k);
                        let answered = Instant::now();
                        log.lock().unwrap().push(Sent {
                            auction,
                            amount: k * 10,
                            bid_id: k,
                            at,
                            answered,
                            got,
                        });
                    }
                }
            })
        })
        .collect();
    // Polls the log until `done` holds, bounded.
    let wait_for = |what: &str, done: &dyn Fn(&[Sent]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if done(&log.lock().unwrap()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let all = |l: &[Sent]| took_a_bid(l, began, auctions.iter().copied());
    wait_for("bids on every auction", &all);

    rc.pause(0);
    let paused = Instant::now();
    // The shards notice (a timeout), then refuse its auctions at once
    // while the others go on: each other auction takes a bid sent after a
    // refusal was seen.
    wait_for("a refusal on the stopped master", &|l: &[Sent]| {
        l.iter()
            .any(|b| b.at >= paused && b.got == Got::Unavailable)
    });
    // The outage lasts a while past that: the shards' probes of the
    // stopped master (each failing after --redis-timeout) must not hold up
    // the others either.
    let later = Instant::now() + 2 * timeout;
    let others = auctions.iter().copied().filter(|a| !on_stopped.contains(a));
    wait_for("bids on the other masters", &|l: &[Sent]| {
        took_a_bid(l, later, others.clone())
    });
    let resuming = Instant::now();
    rc.resume(0);
    let resumed = Instant::now();
    wait_for(
        "bids on the stopped master after it resumed",
        &|l: &[Sent]| took_a_bid(l, resumed, on_stopped.iter().copied()),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let log = std::mem::take(&mut *log.lock().unwrap());

    let slack = Duration::from_millis(1_500);
    let (mut in_doubt, mut unavailable) = (Vec::new(), Vec::new());
    let mut acked: std::collections::HashMap<u64, (u64, u64)> = Default::default();
    for b in &log {
        let took = b.answered - b.at;
        assert!(took <= timeout + slack, "{b:?} took {took:?}");
        let during = b.at >= paused && b.answered < resuming;
        match b.got {
            Got::Result(st, replayed) => {
                assert_eq!((st, replayed), (Status::Ok, false), "{b:?}");
                assert!(
                    !(during && on_stopped.contains(&b.auction)),
                    "answered by the stopped master: {b:?}"
                );
                let e = acked.entry(b.auction).or_default();
                e.0 = e.0.max(b.amount);
                e.1 += 1;
            }
            Got::Unavailable | Got::InDoubt => {
                assert!(
                    on_stopped.contains(&b.auction),
                    "a bid on a master that kept answering: {b:?}"
                );
                assert!(b.answered >= paused, "before the pause: {b:?}");
                if b.got == Got::InDoubt {
                    in_doubt.push(*b);
                } else {
                    unavailable.push(*b);
                }
            }
        }
    }
    assert!(!unavailable.is_empty(), "refusals were seen above");
    // IN_DOUBT: the retry tells (replayed if it had run, else evaluated
    // now); UNAVAILABLE: it had not run, so its retry is no replay.
    for b in in_doubt.iter().chain(&unavailable) {
        match bid_got(&mut c, b.auction, b.amount, b.bid_id) {
            Got::Result(st, replayed) => {
                assert!(
                    !(replayed && b.got == Got::Unavailable),
                    "answered UNAVAILABLE, yet it had run: {b:?}"
                );
                assert!(!replayed || st == Status::Ok, "{b:?}: {st:?}");
                if st == Status::Ok {
                    let e = acked.entry(b.auction).or_default();
                    e.0 = e.0.max(b.amount);
                    e.1 += 1;
                }
            }
            other => panic!("retry of {b:?}: {other:?}"),
        }
    }
    for &id in &auctions {
        let a = c.get_auction(id).unwrap().unwrap();
        let (high, count) = acked[&id];
        assert_eq!(
            (a.high_bid, a.high_bidder, a.bid_count),
            (high, id + 1_000, count),
            "auction {id}: the highest and number of bids acknowledged"
        );
    }
    eprintln!(
        "{} bids, {} in doubt, {} unavailable, {:?} in all",
        log.len(),
        in_doubt.len(),
        unavailable.len(),
        began.elapsed()
    );
    assert!(began.elapsed() < Duration::from_secs(60));
}

/// `gavel_cross_node_update_masters_down` of a node.
fn update_masters_down(s: &Server) -> u64 {
    let (code, body) = s.http_get("/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("gavel_cross_node_update_masters_down "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no masters-down gauge in:\n{body}"))
}

/// Polls `done` every 20 ms until it holds, for at most 20 s.
fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bid through `c`, retried with the same key while the node answers
/// UNAVAILABLE or IN_DOUBT (its connection to the auction's master coming
/// back): it must end OK.
fn bid_until_ok(c: &mut Client, auction: u64, amount: u64) {
    poll_until("a bid to be accepted", || {
        match bid_got(c, auction, amount, amount) {
            Got::Result(Status::Ok, _) => true,
            Got::Unavailable | Got::InDoubt => false,
            other => panic!("bid on {auction}: {other:?}"),
        }
    });
}

/// The next push on `sub` is the BID_UPDATE of `amount` on `auction`.
fn next_update_is(sub: &mut Client, auction: u64, amount: u64) {
    match sub.next_push().unwrap() {
        Push::BidUpdate {
            auction_id,
            high_bid,
            ..
        } if auction_id == auction && high_bid == amount => {}
        other => panic!("waiting for {amount} on {auction}: {other:?}"),
    }
}

/// One master of a 3-master cluster stops answering (SIGSTOP) long enough
/// for node A's update listener to give up on its connection (2 s of
/// silence, then `max(--redis-timeout, 2 s)` for its PING: until now that
/// ended the listener's whole session, and A refused every SUBSCRIBE and
/// said 503 on /readyz until every master answered again). Only that
/// master's channels are lost: /readyz stays 200, a SUBSCRIBE on an auction
/// of another master is OK and its subscriber gets the next bid made
/// through node B (so does one subscribed before the stop), a SUBSCRIBE on
/// an auction of the stopped master is UNAVAILABLE. Once it runs again, a
/// SUBSCRIBE there is OK and pushes flow, also to its subscriber from
/// before the stop (the listener subscribed its channel again).
#[test]
fn a_stopped_cluster_master_loses_only_its_update_channels() {
    let mut rc = RedisCluster::start();
    let urls = rc.urls();
    let joined = urls.join(",");
    let args = [
        "--redis-cluster",
        &joined,
        "--store",
        "memory",
        "--redis-timeout",
        "1s",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let (a, b) = (Server::start(&args), Server::start(&args));
    let map = gavel_redis::RedisGavel::cluster_slots(&urls, Duration::from_secs(5)).unwrap();
    let ports = rc.ports();
    let master_of = |id: u64| {
        let slot = gavel_redis::scripts::slot(&gavel_redis::Op::GetAuction(id));
        let (_, _, url) = map
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .expect("every slot served");
        ports
            .iter()
            .position(|p| url.ends_with(&format!(":{p}")))
            .expect("a master of the cluster")
    };
    let two_on = |m: usize| -> (u64, u64) {
        let ids: Vec<u64> = (1..).filter(|&id| master_of(id) == m).take(2).collect();
        (ids[0], ids[1])
    };
    // p: on the master to stop; h: on another one. *_old: subscribed
    // before the stop, *_new: after.
    let (p_old, p_new) = two_on(0);
    let (h_old, h_new) = two_on(1);
    let mut cb = b.client();
    for id in [p_old, p_new, h_old, h_new] {
        let o = cb.open_auction(id, 0, 1, 0).unwrap();
        assert_eq!(o.result.status, Status::Ok);
    }
    poll_until("A's listener on every master", || {
        update_masters_down(&a) == 0
    });
    let subscriber = |id| {
        let mut c = a.client();
        subscribe_once_live(&mut c, id);
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };
    let (mut sp_old, mut sh_old) = (subscriber(p_old), subscriber(h_old));

    rc.pause(0);
    let paused = Instant::now();
    // A's listener gives up on the stopped master's connection, by the
    // same rule that ended its whole session before; /readyz says 200
    // all along.
    poll_until("A's listener to give up on the stopped master", || {
        let (code, body) = a.http_get("/readyz");
        assert_eq!(code, 200, "{body}");
        update_masters_down(&a) == 1
    });
    eprintln!("listener gave up {:?} after the stop", paused.elapsed());

    let mut sh_new = a.client();
    sh_new.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let o = sh_new
        .subscribe(h_new)
        .expect("SUBSCRIBE on a master that answers");
    assert_eq!(o.result.status, Status::Ok);
    bid_until_ok(&mut cb, h_new, 10);
    next_update_is(&mut sh_new, h_new, 10);
    bid_until_ok(&mut cb, h_old, 20);
    next_update_is(&mut sh_old, h_old, 20);
    let mut sp_new = a.client();
    sp_new.set_timeout(Some(Duration::from_secs(10))).unwrap();
    for id in [p_new, p_old] {
        match sp_new.subscribe(id) {
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => {}
            other => panic!("SUBSCRIBE {id} on the stopped master: {other:?}"),
        }
    }
    let (code, body) = a.http_get("/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(update_masters_down(&a), 1);

    rc.resume(0);
    poll_until(
        "a SUBSCRIBE on the master that runs again",
        || match sp_new.subscribe(p_new) {
            Ok(o) => {
                assert_eq!(o.result.status, Status::Ok);
                true
            }
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => false,
            Err(e) => panic!("{e}"),
        },
    );
    bid_until_ok(&mut cb, p_new, 30);
    next_update_is(&mut sp_new, p_new, 30);
    bid_until_ok(&mut cb, p_old, 40);
    next_update_is(&mut sp_old, p_old, 40);
    poll_until("A's listener on every master again", || {
        update_masters_down(&a) == 0
    });
}
