//! PostgreSQL store against the real binary: SIGKILL mid-stream and restart,
//! and an outage under load. PostgreSQL comes from `gavel_testkit::pg`: a
//! throwaway server started here, or a database of each test's own on the
//! server `GAVEL_TEST_PG_URL` names (the outage test, which stops PostgreSQL,
//! is then skipped and says so).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crash::{bid, crash_cycles, AUCTION};
use common::Server;
use gavel_protocol::{Client, ErrorCode, Response, Status};
use gavel_testkit::pg::Postgres;

#[test]
fn postgres_survives_sigkill_five_times() {
    let pg = Postgres::start();
    crash_cycles(&pg.url());
}

/// PostgreSQL stopped for 5 s under load: UNAVAILABLE (never a hang, never
/// OK), then service resumes without restarting gavel-server, and nothing
/// acknowledged is missing afterwards.
#[test]
fn postgres_outage_gives_unavailable_then_recovers() {
    if !gavel_testkit::pg::managed_or_skip("postgres_outage_gives_unavailable_then_recovers") {
        return;
    }
    let mut pg = Postgres::start();
    let url = pg.url();
    let s = Server::start(&["--store", &url, "--store-timeout", "1s"]);
    let mut c = s.client();
    c.open_auction(AUCTION, 0, 1, 0).unwrap();
    c.open_auction(2, 0, 1, 0).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let addr = s.addr;
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(addr).unwrap();
            c.set_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut acked = Vec::new();
            let (mut unavailable, mut slowest) = (0u64, Duration::ZERO);
            let mut last_ok_after_outage = None;
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // 16 in flight, amounts rising.
                let t = Instant::now();
                let mut pending = HashMap::new();
                for _ in 0..16 {
                    id += 1;
                    pending.insert(c.send(&bid(id, id * 10)), id);
                }
                c.flush().unwrap();
                for _ in 0..16 {
                    let f = c.recv().expect("the server answers, never hangs");
                    let id = pending[&f.request_id];
                    match f.body {
                        Response::Result(r) if r.status == Status::Ok => {
                            acked.push(id);
                            if unavailable > 0 {
                                last_ok_after_outage = Some(id);
                            }
                        }
                        Response::Error {
                            code: ErrorCode::Unavailable,
                            ..
                        } => unavailable += 1,
                        // Applied just before the outage was detected, or
                        // refused while it lasts: never an OK without commit.
                        other => panic!("unexpected reply {other:?}"),
                    }
                }
                slowest = slowest.max(t.elapsed());
            }
            (acked, unavailable, slowest, last_ok_after_outage)
        })
    };

    // Let load run, then take PostgreSQL away for 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get_auction(AUCTION).unwrap().unwrap().bid_count < 2000 {
        assert!(Instant::now() < deadline, "no progress before the outage");
    }
    pg.stop();
    let outage = Instant::now();
    // Reads keep working while the store is down.
    while outage.elapsed() < Duration::from_secs(5) {
        assert!(c.get_auction(AUCTION).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(100));
    }
    pg.start_again();
    // Service resumes by itself: wait (bounded) for a fresh OK.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 10_000_000u64;
    loop {
        n += 1;
        match c.bid(2, 1, n, n) {
            Ok(o) if o.result.status == Status::Ok => break,
            Ok(o) => panic!("{o:?}"),
            Err(gavel_protocol::ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => {
                assert!(Instant::now() < deadline, "no recovery within 30 s");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, unavailable, slowest, _) = load.join().unwrap();
    assert!(unavailable > 0, "the outage was visible as UNAVAILABLE");
    assert!(
        slowest < Duration::from_secs(5),
        "a batch of requests waited {slowest:?}: bounded by --store-timeout"
    );
    drop(c);
    drop(s);

    // Nothing acknowledged is missing: a fresh server replays every OK.
    let s = Server::start(&["--store", &url]);
    let mut c = s.client();
    for id in &acked {
        c.send(&bid(*id, id * 10));
    }
    c.flush().unwrap();
    for _ in 0..acked.len() {
        let f = c.recv().unwrap();
        assert!(
            f.replayed() && matches!(f.body, Response::Result(r) if r.status == Status::Ok),
            "{f:?}"
        );
    }
}

/// Many bids on one auction in one batch: one state row with the final
/// value, and every bid in the log; a retried batch changes nothing.
#[test]
fn postgres_batch_coalesces_state_and_keeps_every_bid() {
    use gavel_protocol::OpenAuctionRequest;
    use gavel_server::engine::mutation::Mutation;
    use gavel_server::store::postgres::PgStore;
    use gavel_server::store::{Store, WriteBatch};

    let pg = Postgres::start();
    let mut store = PgStore::connect(&pg.url(), Duration::from_secs(5)).unwrap();
    let mut b = WriteBatch::default();
    b.add(&Mutation::AuctionOpened {
        req: OpenAuctionRequest {
            auction_id: 7,
            reserve: 0,
            min_increment: 1,
            ends_at_ms: 0,
        },
        at_ms: 1,
    });
    for i in 1..=1000u64 {
        b.add(&Mutation::BidAccepted {
            auction_id: 7,
            bidder_id: i % 13,
            amount: u64::MAX - 1000 + i,
            bid_id: i,
            bid_count: i,
            at_ms: 2,
        });
    }
    store.commit(&b, true).unwrap();
    store.commit(&b, false).unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM auctions"), "1");
    assert_eq!(pg.psql("SELECT count(*) FROM bids"), "1000");
    assert_eq!(
        pg.psql("SELECT high_bidder, bid_count FROM auctions"),
        format!("{}|1000", 1000 % 13)
    );
    let snap = store.load(0).unwrap();
    assert_eq!(snap.auctions[0].high_bid, u64::MAX, "u64 survives BIGINT");
    assert_eq!(snap.bids.len(), 1000);
    // A first attempt that collides (e.g. retried after an unknown outcome)
    // fails as a whole; the idempotent retry then succeeds.
    assert!(store.commit(&b, true).is_err());
    store.commit(&b, false).unwrap();
}
