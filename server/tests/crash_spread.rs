//! Journal-first durability against the real binary, on both stores: bids
//! over thousands of auctions and buys over hundreds of SKUs, SIGKILL
//! mid-stream ×5, restart, check (see `common::spread`) — also with the
//! materializer held far behind the journal, so recovery must replay it.

mod common;

use common::crash::temp_dir;
use common::spread::crash_cycles;
use common::Server;
use gavel_testkit::pg::Postgres;

/// `--materializer-pause` keeps the tables behind; the check before each
/// kill proves the journal holds acknowledged work the tables do not.
const LAGGING: [&str; 4] = [
    "--materializer-pause",
    "5s",
    "--metrics-listen",
    "127.0.0.1:0",
];

fn materializer_is_behind(s: &Server) {
    let (code, body) = s.http_get("/metrics");
    assert_eq!(code, 200);
    let lag: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("gavel_materializer_lag_mutations "))
        .expect("lag metric")
        .trim()
        .parse()
        .unwrap();
    assert!(
        lag >= 1000.0,
        "the materializer should be far behind, lag {lag}"
    );
}

fn sqlite_store(tag: &str) -> (std::path::PathBuf, String) {
    let dir = temp_dir(tag);
    let store = format!("sqlite:{}/gavel.db", dir.display());
    (dir, store)
}

#[test]
fn sqlite_spread_survives_sigkill_five_times() {
    let (dir, store) = sqlite_store("spread-sqlite");
    crash_cycles(&["--store", &store], &|_| {});
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sqlite_recovers_a_lagging_materializer_after_sigkill() {
    let (dir, store) = sqlite_store("spread-sqlite-lag");
    let mut args = vec!["--store", &store];
    args.extend(LAGGING);
    crash_cycles(&args, &materializer_is_behind);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn postgres_spread_survives_sigkill_five_times() {
    let pg = Postgres::start();
    crash_cycles(&["--store", &pg.url()], &|_| {});
}

#[test]
fn postgres_recovers_a_lagging_materializer_after_sigkill() {
    let pg = Postgres::start();
    let url = pg.url();
    let mut args = vec!["--store", &url];
    args.extend(LAGGING);
    crash_cycles(&args, &materializer_is_behind);
}
