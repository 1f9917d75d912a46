//! Durable SQLite store against the real binary: SIGKILL mid-stream and
//! restart, the default store, async acknowledgements.

mod common;

use common::crash::{bid, crash_cycles, temp_dir};
use common::Server;
use gavel_protocol::{Client, Response, Status};

#[test]
fn sqlite_survives_sigkill_five_times() {
    let dir = temp_dir("sqlite-crash");
    let store = format!("sqlite:{}/gavel.db", dir.display());
    crash_cycles(&store);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sqlite_is_the_default_store_and_is_created_on_first_start() {
    let dir = temp_dir("sqlite-default");
    let start = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gavel-server"));
        cmd.current_dir(&dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let addr: std::net::SocketAddr = line.trim()["listening on ".len()..].parse().unwrap();
        (child, addr)
    };
    let (mut child, addr) = start();
    assert!(dir.join("gavel-data/gavel.db").exists());
    let mut c = Client::connect(addr).unwrap();
    c.open_auction(9, 0, 1, 0).unwrap();
    assert_eq!(c.bid(9, 3, 500, 77).unwrap().result.status, Status::Ok);
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, addr) = start();
    let mut c = Client::connect(addr).unwrap();
    assert_eq!(c.get_auction(9).unwrap().unwrap().high_bid, 500);
    let again = c.bid(9, 3, 500, 77).unwrap();
    assert!(again.replayed && again.result.status == Status::Ok);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn async_ack_replies_before_commit_and_still_persists_on_clean_shutdown() {
    let dir = temp_dir("sqlite-async");
    let store = format!("sqlite:{}/gavel.db", dir.display());
    let mut s = Server::start(&["--store", &store, "--ack", "async"]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    for i in 1..=1000 {
        c.send(&bid(i, i * 10));
    }
    c.flush().unwrap();
    for _ in 0..1000 {
        assert!(matches!(c.recv().unwrap().body, Response::Result(r) if r.status == Status::Ok));
    }
    assert!(s.terminate().success(), "SIGTERM exits 0");
    let s = Server::start(&["--store", &store]);
    let a = s.client().get_auction(1).unwrap().unwrap();
    assert_eq!(
        (a.high_bid, a.bid_count),
        (10_000, 1000),
        "flushed at shutdown"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGTERM while requests are in flight: what was answered OK is committed,
/// the rest is answered SHUTTING_DOWN (or nothing, after the close), and the
/// process exits 0 within the grace period.
#[test]
fn sigterm_answers_in_flight_requests_and_exits_zero() {
    let dir = temp_dir("sqlite-sigterm");
    let store = format!("sqlite:{}/gavel.db", dir.display());
    let mut s = Server::start(&["--store", &store]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    for i in 1..=20_000 {
        c.send(&bid(i, i * 10));
    }
    c.flush().unwrap();
    let t = std::time::Instant::now();
    send_sigterm(&s);
    let (mut ok, mut shutting_down, mut max_ok) = (0u64, 0u64, 0u64);
    while let Ok(f) = c.recv() {
        match f.body {
            Response::Result(r) if r.status == Status::Ok => {
                ok += 1;
                max_ok = max_ok.max(r.value);
            }
            Response::Error {
                code: gavel_protocol::ErrorCode::ShuttingDown,
                ..
            } => shutting_down += 1,
            other => panic!("unexpected reply during shutdown: {other:?}"),
        }
    }
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    assert!(ok + shutting_down > 0);
    let s = Server::start(&["--store", &store]);
    let a = s.client().get_auction(1).unwrap().unwrap();
    assert!(
        a.high_bid >= max_ok && a.bid_count >= ok,
        "acknowledged before shutdown but not committed: {a:?} ok={ok} max={max_ok}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn send_sigterm(s: &Server) {
    std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
}

/// A journal append that does not return (here: another process holds the
/// journal file's write lock, and SQLite waits for it) must not hold the
/// replies waiting for it past `--store-timeout`: they are answered
/// IN_DOUBT while the append is still pending (no store error counted yet),
/// and the retry replays once the store moves again. Before the journal
/// calls ran on their own thread, the writer sat inside the append and
/// answered only after it failed.
#[test]
fn a_stalled_journal_append_does_not_hold_replies_past_the_store_timeout() {
    let dir = temp_dir("sqlite-stall");
    let db = dir.join("gavel.db");
    let store = format!("sqlite:{}", db.display());
    let s = Server::start(&[
        "--store",
        &store,
        "--store-timeout",
        "300ms",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut c = s.client();
    c.open_auction(1, 0, 1, 0).unwrap();
    let lock = rusqlite::Connection::open(format!("{}.journal", db.display())).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = c.bid(1, 7, 100, 1).unwrap_err();
    assert!(
        matches!(
            err,
            gavel_protocol::ClientError::Server {
                code: gavel_protocol::ErrorCode::InDoubt,
                ..
            }
        ),
        "{err}"
    );
    let (_, metrics) = s.http_get("/metrics");
    assert!(
        metrics.contains("gavel_store_errors_total 0"),
        "answered before the append gave up"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    // The writer retries the same record; the retry then replays.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match c.bid(1, 7, 100, 1) {
            Ok(o) => {
                assert!(o.replayed && o.result.status == Status::Ok, "{o:?}");
                break;
            }
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no recovery: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}
