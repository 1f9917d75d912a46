//! Closed auctions, and sold-out or ended sales, leave memory for the
//! durable store (`--passivate-after`; SQLite and PostgreSQL) and come back
//! when a request names them: every answer is as before (a sale's holdings
//! included), and the room they held under `--max-auctions` /
//! `--max-sales` is free again. (Before, they stayed in memory for ever and
//! the caps became walls.)

mod common;

use std::time::{Duration, Instant};

use common::crash::temp_dir;
use common::spill::metric;
use common::Server;
use gavel_protocol::{
    AuctionInfo, Client, ClientError, ErrorCode, ResultPayload, SaleInfo, Status,
};
use gavel_testkit::pg::Postgres;

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
    auctions_leave_and_come_back(&format!("sqlite:{}/gavel.db", dir.display()));
}

#[test]
fn closed_auctions_leave_memory_for_postgres_and_answer_as_before() {
    let pg = Postgres::start();
    auctions_leave_and_come_back(&pg.url());
}

fn auctions_leave_and_come_back(store: &str) {
    let argv = args(store);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut s = Server::start(&argv);
    let mut c = s.client();
    let mut firsts = Vec::new();
    for id in 1..=N {
        c.open_auction(id, 10, 1, 0).unwrap();
        // Watched, so it cannot leave memory while idle and open.
        c.subscribe(id).unwrap();
        firsts.push(c.bid(id, 7, 100 + id, id).unwrap().result);
    }
    // 20 open watched auctions are held: the 21st is refused.
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
    // After a restart closed auctions stay in the tables until named; the
    // 20 open ones (nobody watches them now) leave once idle.
    let s = Server::start(&argv);
    wait_for_metric(&s, "gavel_auctions_passivated", 2.0 * N as f64);
    check_closed(&mut s.client(), &infos, &firsts);
}

/// Sold-out sales (first half) and ended sales (second half): their
/// orders, a first buy, `GET_SALE` and reopening, as answered before they
/// left memory.
struct SaleHistory {
    infos: Vec<SaleInfo>,
    orders: Vec<Vec<(u64, u32, u64, ResultPayload)>>,
}

const SALES: u64 = 20;

fn sell_out_or_end(c: &mut Client) -> SaleHistory {
    // Room for 20 opens and 40 durable buys on a loaded machine.
    let ends_at = common::now_ms() + 2_000;
    for sku in 1..=SALES {
        let (stock, end) = if sku > SALES / 2 {
            (100, ends_at)
        } else {
            (3, 0)
        };
        c.open_sale(sku, stock, 2, 0, end).unwrap();
    }
    // 20 sales are held (none finished yet): the 21st is refused.
    match c.open_sale(2 * SALES + 1, 5, 0, 0, 0) {
        Err(ClientError::Server {
            code: ErrorCode::Busy,
            ..
        }) => {}
        other => panic!("the 21st sale while 20 are held: {other:?}"),
    }
    let mut orders = Vec::new();
    for sku in 1..=SALES {
        // Buyer 1 takes 2, buyer 2 takes 1: sold out when the stock is 3.
        let mut done = Vec::new();
        for (buyer, qty) in [(1, 2), (2, 1)] {
            let order = sku * 10 + buyer;
            let r = c.buy(sku, buyer, qty, order).unwrap().result;
            assert_eq!(r.status, Status::Ok);
            done.push((buyer, qty, order, r));
        }
        orders.push(done);
    }
    // The ended half is over once the clock passes its end.
    while common::now_ms() <= ends_at {
        std::thread::yield_now();
    }
    let infos = (1..=SALES)
        .map(|sku| c.get_sale(sku).unwrap().unwrap())
        .collect();
    SaleHistory { infos, orders }
}

fn check_sales(c: &mut Client, h: &SaleHistory) {
    for (i, (info, orders)) in h.infos.iter().zip(&h.orders).enumerate() {
        let sku = i as u64 + 1;
        assert_eq!(c.get_sale(sku).unwrap().as_ref(), Some(info), "sale {sku}");
        for &(buyer, qty, order, first) in orders {
            let again = c.buy(sku, buyer, qty, order).unwrap();
            assert!(again.replayed, "order {order} replays");
            assert_eq!(again.result, first, "order {order}");
        }
        // A new order: refused, with the stock left and the buyer's
        // holding as the tables hold them (holdings came back too).
        let status = if sku > SALES / 2 {
            Status::Closed
        } else {
            Status::SoldOut
        };
        let left = info.stock - info.sold;
        let fresh = c.buy(sku, 1, 1, 1_000_000 + sku).unwrap().result;
        assert_eq!(fresh, ResultPayload::new(status, left, 2), "sale {sku}");
        let o = c.open_sale(sku, info.stock, 2, 0, info.ends_at_ms).unwrap();
        assert!(o.replayed, "same parameters: replayed OK");
        let other = c
            .open_sale(sku, info.stock + 1, 2, 0, info.ends_at_ms)
            .unwrap();
        assert_eq!(other.result.status, Status::AlreadyExists);
    }
}

#[test]
fn sold_out_and_ended_sales_leave_memory_and_answer_as_before() {
    let dir = temp_dir("passivate-sales");
    sales_leave_and_come_back(&format!("sqlite:{}/gavel.db", dir.display()));
}

#[test]
fn sold_out_and_ended_sales_leave_memory_for_postgres_and_answer_as_before() {
    let pg = Postgres::start();
    sales_leave_and_come_back(&pg.url());
}

fn sales_leave_and_come_back(store: &str) {
    let mut argv = args(store);
    argv.extend(["--max-sales", "20"].map(String::from));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut s = Server::start(&argv);
    let mut c = s.client();
    let h = sell_out_or_end(&mut c);
    wait_for_metric(&s, "gavel_sales_passivated", SALES as f64);
    assert_eq!(metric(&s.http_get("/metrics").1, "gavel_sales"), 0.0);
    for sku in SALES + 1..=2 * SALES {
        let o = c.open_sale(sku, 5, 0, 0, 0).unwrap();
        assert_eq!(o.result.status, Status::Ok, "room is free again: {sku}");
    }
    check_sales(&mut c, &h);
    assert!(s.terminate().success());
    // After a restart: sold-out sales stay in the tables until named, and
    // ended ones leave again after the delay.
    let s = Server::start(&argv);
    let mut c = s.client();
    wait_for_metric(&s, "gavel_sales_passivated", SALES as f64);
    check_sales(&mut c, &h);
}

/// Open auctions no command names for the period leave memory too; they
/// come back as they were, and an end that comes while they are out is
/// recorded in the tables (`closed_in_tables` counts closed rows).
fn idle_auctions_leave_and_come_back(store: &str, closed_in_tables: &dyn Fn() -> u64) {
    let argv = args(store);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let s = Server::start(&argv);
    let mut c = s.client();
    // Room for 10 opens and 10 durable bids on a loaded machine.
    let ends_at = common::now_ms() + 2_000;
    let mut infos = Vec::new();
    for id in 1..=10 {
        let end = if id > 5 { ends_at } else { 0 };
        c.open_auction(id, 10, 1, end).unwrap();
        let r = c.bid(id, 7, 100 + id, id).unwrap().result;
        assert_eq!(r.status, Status::Ok);
        infos.push(c.get_auction(id).unwrap().unwrap());
    }
    wait_for_metric(&s, "gavel_auctions_passivated", 10.0);
    assert_eq!(metric(&s.http_get("/metrics").1, "gavel_auctions"), 0.0);
    for (id, info) in (1..=5).zip(&infos) {
        assert_eq!(c.get_auction(id).unwrap().as_ref(), Some(info));
        let again = c.bid(id, 7, 100 + id, id).unwrap();
        assert!(again.replayed, "bid {id} replays");
    }
    // 6..10 end while out of memory: their closings reach the tables.
    let deadline = Instant::now() + Duration::from_secs(30);
    while closed_in_tables() < 5 {
        assert!(
            Instant::now() < deadline,
            "closings of idle auctions not recorded"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling another process
    }
    assert_eq!(closed_in_tables(), 5);
    for (id, info) in (6..=10).zip(&infos[5..]) {
        let got = c.get_auction(id).unwrap().unwrap();
        assert_eq!(got.state, gavel_protocol::AuctionState::Closed);
        assert_eq!(
            (got.high_bid, got.high_bidder),
            (info.high_bid, info.high_bidder)
        );
    }
    let r = c.bid(1, 8, 500, 99).unwrap().result;
    assert_eq!(r, ResultPayload::new(Status::Ok, 500, 8), "back and open");
}

#[test]
fn idle_open_auctions_leave_memory_and_their_ends_are_recorded() {
    let dir = temp_dir("passivate-idle");
    let db = dir.join("gavel.db");
    let closed = || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("SELECT count(*) FROM auctions WHERE closed = 1", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    idle_auctions_leave_and_come_back(&format!("sqlite:{}", db.display()), &closed);
}

#[test]
fn idle_open_auctions_leave_memory_for_postgres_and_their_ends_are_recorded() {
    let pg = Postgres::start();
    let closed = || {
        let n = pg.psql("SELECT count(*) FROM auctions WHERE closed");
        n.trim().parse().unwrap()
    };
    idle_auctions_leave_and_come_back(&pg.url(), &closed);
}
