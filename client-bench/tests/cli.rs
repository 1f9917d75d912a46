//! `gavel-cli` against the real server: every subcommand, text and JSON
//! output, and the exit-code contract (0 reply, 2 ERROR, 1 usage/connection).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{cli_bin, dead_addr, run, stderr, stdout, Server};
use serde_json::Value;

fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let addr = server.addr();
    let mut all = vec!["--addr", addr.as_str()];
    all.extend_from_slice(args);
    let out = run(cli_bin(), &all);
    (out.status.code().unwrap(), stdout(&out), stderr(&out))
}

#[test]
fn ping() {
    let s = Server::start(&[]);
    let (code, out, _) = cli(&s, &["ping", "--payload", "hello"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("PONG len=5 payload=\"hello\" rtt_us="),
        "{out}"
    );
    let (code, out, _) = cli(&s, &["--json", "ping"]);
    assert_eq!(code, 0);
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["type"], "PONG");
    assert_eq!(j["len"], 0);
    assert!(j["rtt_us"].is_u64());
}

#[test]
fn auction_lifecycle() {
    let s = Server::start(&[]);
    let (code, out, _) = cli(
        &s,
        &[
            "open-auction",
            "--auction",
            "1",
            "--reserve",
            "50",
            "--min-increment",
            "10",
        ],
    );
    assert_eq!((code, out.trim()), (0, "RESULT OK value=0 aux=0"));
    let (code, out, _) = cli(
        &s,
        &[
            "open-auction",
            "--auction",
            "1",
            "--reserve",
            "50",
            "--min-increment",
            "10",
        ],
    );
    assert_eq!(
        (code, out.trim()),
        (0, "RESULT OK value=0 aux=0 (replayed)")
    );
    let (code, out, _) = cli(&s, &["open-auction", "--auction", "1", "--reserve", "60"]);
    assert_eq!(
        (code, out.trim()),
        (0, "RESULT ALREADY_EXISTS value=0 aux=0")
    );

    let bid = |amount: &str, bidder: &str, id: &str| {
        cli(
            &s,
            &[
                "bid",
                "--auction",
                "1",
                "--bidder",
                bidder,
                "--amount",
                amount,
                "--bid-id",
                id,
            ],
        )
    };
    assert_eq!(
        bid("40", "7", "1").1.trim(),
        "RESULT BELOW_RESERVE value=0 aux=0"
    );
    assert_eq!(bid("1500", "7", "2").1.trim(), "RESULT OK value=1500 aux=7");
    assert_eq!(
        bid("1505", "8", "3").1.trim(),
        "RESULT OUTBID value=1500 aux=7"
    );
    assert_eq!(
        bid("1500", "7", "2").1.trim(),
        "RESULT OK value=1500 aux=7 (replayed)"
    );
    // Same key, different fields: the server refuses with an ERROR → exit 2.
    let (code, out, err) = bid("1600", "7", "2");
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("ERROR IDEMPOTENCY_CONFLICT"), "{err}");
    // bid_id 0 is malformed.
    let (code, _, err) = bid("1600", "7", "0");
    assert_eq!(code, 2);
    assert!(err.contains("ERROR MALFORMED"), "{err}");
    // Without --bid-id a random key is used and announced.
    let (code, out, err) = cli(
        &s,
        &["bid", "--auction", "1", "--bidder", "9", "--amount", "2000"],
    );
    assert_eq!((code, out.trim()), (0, "RESULT OK value=2000 aux=9"));
    assert!(err.contains("using --bid-id "), "{err}");

    let (code, out, _) = cli(&s, &["get-auction", "--auction", "1"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "AUCTION");
    for want in [
        "auction_id=1",
        "state=OPEN",
        "high_bid=2000",
        "high_bidder=9",
        "bid_count=2",
        "reserve=50",
        "min_increment=10",
        "ends_at_ms=0",
    ] {
        assert!(lines.contains(&want), "{want} not in {out}");
    }

    let (code, out, _) = cli(&s, &["close-auction", "--auction", "1"]);
    assert_eq!((code, out.trim()), (0, "RESULT OK value=2000 aux=9"));
    let (code, out, _) = cli(&s, &["--json", "get-auction", "--auction", "1"]);
    assert_eq!(code, 0);
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["type"], "AUCTION");
    assert_eq!(j["state"], "CLOSED");
    assert_eq!(j["high_bid"], 2000);
    let (_, out, _) = cli(
        &s,
        &["bid", "--auction", "1", "--bidder", "1", "--amount", "9999"],
    );
    assert!(out.starts_with("RESULT CLOSED"), "{out}");

    // NOT_FOUND is a business outcome: exit 0.
    let (code, out, _) = cli(&s, &["get-auction", "--auction", "404"]);
    assert_eq!((code, out.trim()), (0, "RESULT NOT_FOUND value=0 aux=0"));
    let (code, out, _) = cli(&s, &["close-auction", "--auction", "404"]);
    assert_eq!((code, out.trim()), (0, "RESULT NOT_FOUND value=0 aux=0"));
}

#[test]
fn sale_lifecycle() {
    let s = Server::start(&[]);
    let (code, out, _) = cli(
        &s,
        &[
            "open-sale",
            "--sku",
            "5",
            "--stock",
            "3",
            "--per-buyer-limit",
            "2",
        ],
    );
    assert_eq!((code, out.trim()), (0, "RESULT OK value=0 aux=0"));
    let buy = |buyer: &str, q: &str, id: &str| {
        cli(
            &s,
            &[
                "buy",
                "--sku",
                "5",
                "--buyer",
                buyer,
                "--quantity",
                q,
                "--order-id",
                id,
            ],
        )
    };
    assert_eq!(buy("1", "2", "1").1.trim(), "RESULT OK value=1 aux=2");
    assert_eq!(
        buy("1", "1", "2").1.trim(),
        "RESULT LIMIT_EXCEEDED value=1 aux=2"
    );
    assert_eq!(buy("2", "2", "3").1.trim(), "RESULT SOLD_OUT value=1 aux=0");
    let (code, out, _) = cli(
        &s,
        &[
            "--json",
            "buy",
            "--sku",
            "5",
            "--buyer",
            "2",
            "--order-id",
            "4",
        ],
    );
    assert_eq!(code, 0);
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (j["type"].as_str(), j["status"].as_str()),
        (Some("RESULT"), Some("OK"))
    );
    assert_eq!((j["value"].as_u64(), j["aux"].as_u64()), (Some(0), Some(1)));
    assert_eq!(j["replayed"], false);
    let (code, _, err) = buy("3", "0", "5");
    assert_eq!(code, 2, "quantity 0 is refused");
    assert!(err.contains("ERROR MALFORMED"), "{err}");

    let (code, out, _) = cli(&s, &["get-sale", "--sku", "5"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "SALE");
    for want in [
        "sku_id=5",
        "state=OPEN",
        "stock=3",
        "sold=3",
        "per_buyer_limit=2",
    ] {
        assert!(lines.contains(&want), "{want} not in {out}");
    }
    let (code, out, _) = cli(&s, &["get-sale", "--sku", "6"]);
    assert_eq!((code, out.trim()), (0, "RESULT NOT_FOUND value=0 aux=0"));
    let (code, out, _) = cli(
        &s,
        &["buy", "--sku", "6", "--buyer", "1", "--order-id", "1"],
    );
    assert_eq!((code, out.trim()), (0, "RESULT NOT_FOUND value=0 aux=0"));
}

#[test]
fn subscribe_prints_pushes_until_count() {
    let s = Server::start(&[]);
    assert_eq!(cli(&s, &["open-auction", "--auction", "3"]).0, 0);
    let mut child = Command::new(cli_bin())
        .args([
            "--addr",
            &s.addr(),
            "subscribe",
            "--auction",
            "3",
            "--count",
            "3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Safety net, not synchronisation: should pushes never come, kill the
    // subscriber after a generous bound instead of hanging the suite.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let pid = child.id() as libc::pid_t;
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(std::time::Duration::from_secs(60))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The subscription is in place once its RESULT is printed.
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "RESULT OK value=0 aux=0");
    for (amount, id) in [("10", "1"), ("20", "2")] {
        let (code, _, _) = cli(
            &s,
            &[
                "bid",
                "--auction",
                "3",
                "--bidder",
                "4",
                "--amount",
                amount,
                "--bid-id",
                id,
            ],
        );
        assert_eq!(code, 0);
    }
    assert_eq!(cli(&s, &["close-auction", "--auction", "3"]).0, 0);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        rest,
        vec![
            "BID_UPDATE auction_id=3 high_bid=10 high_bidder=4 bid_count=1",
            "BID_UPDATE auction_id=3 high_bid=20 high_bidder=4 bid_count=2",
            "AUCTION_CLOSED auction_id=3 winning_bid=20 winner=4",
        ]
    );
}

#[test]
fn subscribe_to_missing_auction_returns_at_once() {
    let s = Server::start(&[]);
    let (code, out, _) = cli(&s, &["subscribe", "--auction", "99", "--count", "1"]);
    assert_eq!((code, out.trim()), (0, "RESULT NOT_FOUND value=0 aux=0"));
}

#[test]
fn auth_token() {
    let s = Server::start(&["--auth-token", "sesame"]);
    let (code, out, _) = cli(&s, &["--auth-token", "sesame", "ping", "--payload", "x"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("PONG len=1"), "{out}");
    let (code, out, err) = cli(&s, &["ping"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("ERROR UNAUTHORIZED"), "{err}");
    let (code, out, err) = cli(
        &s,
        &["--json", "--auth-token", "nope", "get-sale", "--sku", "1"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("ERROR UNAUTHORIZED"), "{err}");
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["code"], "UNAUTHORIZED");
}

#[test]
fn usage_and_connection_problems_exit_1() {
    let out = run(cli_bin(), &["--addr", &dead_addr(), "ping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    let out = run(cli_bin(), &["bid", "--auction", "1"]);
    assert_eq!(out.status.code(), Some(1), "missing required flags");
    let out = run(cli_bin(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(cli_bin(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for sub in [
        "ping",
        "open-auction",
        "bid",
        "close-auction",
        "get-auction",
        "open-sale",
        "buy",
        "get-sale",
        "subscribe",
    ] {
        assert!(help.contains(sub), "{sub} missing from --help");
    }
}
