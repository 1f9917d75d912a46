//! Closed auctions leave memory for the durable store (`--passivate-after`)
//! and come back when a request names them: every answer is as before, and
//! the room they held under `--max-auctions` is free again. (Before, closed
//! auctions stayed in memory for ever and `--max-auctions` became a wall.)

mod common;

use std::time::{Duration, Instant};

use common::crash::temp_dir;
use common::spill::metric;
use common::Server;
use gavel_protocol::{AuctionInfo, Client, ClientError, ErrorCode, ResultPayload, Status};

const N: u64 = 20;

fn args(store: &str) -> Vec<String> {
    [
        "--store",
        store,
        "--shards",
        "1",
        "--max-auctions",
        "20",
        "--passivate-after",
        "50ms",
        "--sweep-interval",
        "10ms",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec()
}

/// Polls `/metrics` until `name` reads `want` (the sweep and the
/// materializer run on their own clocks), within a deadline.
fn wait_for_metric(s: &Server, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = metric(&s.http_get("/metrics").1, name);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {got}, waited for {want}"
        );
        std::thread::yield_now();
    }
}

/// The old auctions answer exactly as before they left memory.
fn check_closed(c: &mut Client, infos: &[AuctionInfo], firsts: &[ResultPayload]) {
    for (i, (info, first)) in infos.iter().zip(firsts).enumerate() {
        let id = i as u64 + 1;
        assert_eq!(
            c.get_auction(id).unwrap().as_ref(),
            Some(info),
            "auction {id}"
        );
        let again = c.bid(id, 7, 100 + id, id).unwrap();
        assert!(again.replayed, "bid {id} replays");
        assert_eq!(again.result, *first);
        let late = c.bid(id, 8, 1_000_000, 1_000 + id).unwrap().result;
        assert_eq!(late, ResultPayload::new(Status::Closed, 100 + id, 7));
        let reopen = c.open_auction(id, 10, 1, 0).unwrap();
        assert!(reopen.replayed, "same parameters: replayed OK");
        match c.open_auction(id, 11, 1, 0) {
            Ok(o) => assert_eq!(o.result.status, Status::AlreadyExists),
            Err(e) => panic!("auction {id}: {e}"),
        }
    }
}

#[test]
fn closed_auctions_leave_memory_and_answer_as_before() {
    let dir = temp_dir("passivate");
    let store = format!("sqlite:{}/gavel.db", dir.display());
    let argv = args(&store);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut s = Server::start(&argv);
    let mut c = s.client();
    let mut firsts = Vec::new();
    for id in 1..=N {
        c.open_auction(id, 10, 1, 0).unwrap();
        firsts.push(c.bid(id, 7, 100 + id, id).unwrap().result);
    }
    // 20 open auctions are held (none can leave): the 21st is refused.
    match c.open_auction(N + 1, 10, 1, 0) {
        Err(ClientError::Server {
            code: ErrorCode::Busy,
            ..
        }) => {}
        other => panic!("the 21st auction while 20 are held: {other:?}"),
    }
    let infos: Vec<AuctionInfo> = (1..=N)
        .map(|id| {
            c.close_auction(id).unwrap();
            c.get_auction(id).unwrap().unwrap()
        })
        .collect();
    wait_for_metric(&s, "gavel_auctions_passivated", N as f64);
    assert_eq!(metric(&s.http_get("/metrics").1, "gavel_auctions"), 0.0);
    for id in N + 1..=2 * N {
        let o = c.open_auction(id, 10, 1, 0).unwrap();
        assert_eq!(o.result.status, Status::Ok, "room is free again: {id}");
    }
    check_closed(&mut c, &infos, &firsts);
    assert!(s.terminate().success());
    // After a restart closed auctions stay in the tables until named.
    let s = Server::start(&argv);
    wait_for_metric(&s, "gavel_auctions_passivated", N as f64);
    check_closed(&mut s.client(), &infos, &firsts);
}
