//! `client-bench` against the real server: accounting, verification, error
//! counting by code, connect failures, authentication, pacing modes.

mod common;

use common::{bench_bin, dead_addr, run, stdout, temp_path, Server};
use serde_json::Value;

/// Runs client-bench with `--json` and returns (exit code, parsed JSON).
fn bench_json(server_addr: &str, name: &str, args: &[&str]) -> (i32, Value) {
    let path = temp_path(&format!("{name}.json"));
    let _ = std::fs::remove_file(&path);
    let p = path.to_str().unwrap().to_string();
    let mut all = vec!["--addr", server_addr, "--json", &p, "--no-progress"];
    all.extend_from_slice(args);
    let out = run(bench_bin(), &all);
    let code = out.status.code().expect("exit code");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no JSON written ({e}); stdout: {}", stdout(&out)));
    let _ = std::fs::remove_file(&path);
    (code, serde_json::from_str(&text).expect("valid JSON"))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("field {k} missing or not an integer in {v}"))
}

fn sum(obj: &Value) -> u64 {
    obj.as_object()
        .expect("object")
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

#[test]
fn accounting_is_exact_and_verify_passes() {
    let server = Server::start(&[]);
    let hist = temp_path("accounting.hist");
    let h = hist.to_str().unwrap().to_string();
    let (code, j) = bench_json(
        &server.addr(),
        "accounting",
        &[
            "--connections",
            "10",
            "--bids-per-conn",
            "200",
            "--pipeline",
            "8",
            "--verify",
            "--hist",
            &h,
        ],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "attempted"), 2000);
    assert_eq!(u(&j, "succeeded"), 2000);
    assert_eq!(u(&j, "lost"), 0);
    assert_eq!(u(&j, "failed"), 0);
    assert_eq!(u(&j, "connect_failures"), 0);
    // Every connection saw the server's EOF after its last reply.
    assert_eq!(u(&j, "timeouts"), 0);
    assert_eq!(u(&j, "closed_by_server"), 0);
    assert!(j["duration_s"].as_f64().unwrap() < 20.0);
    assert_eq!(sum(&j["outcomes"]), 2000);
    assert!(u(&j["outcomes"], "OK") > 0);
    assert_eq!(j["errors"].as_object().unwrap().len(), 0);
    assert_eq!(j["success_rate"].as_f64(), Some(1.0));
    assert!(j["rps"].as_f64().unwrap() > 0.0);
    assert!((j["rpm"].as_f64().unwrap() / j["rps"].as_f64().unwrap() - 60.0).abs() < 1e-6);
    assert!(j["duration_s"].as_f64().unwrap() > 0.0);
    let (min, p50, p90, p99, p999, max) = (
        u(&j, "min_us"),
        u(&j, "p50_us"),
        u(&j, "p90_us"),
        u(&j, "p99_us"),
        u(&j, "p999_us"),
        u(&j, "max_us"),
    );
    assert!(min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max);
    assert_eq!(j["verify"]["ok"], true);
    assert_eq!(u(&j["verify"], "auctions_checked"), 1);
    assert_eq!(u(&j["config"], "connections"), 10);
    assert_eq!(u(&j["config"], "pipeline"), 8);
    let dist = std::fs::read_to_string(&hist).expect("--hist written");
    let _ = std::fs::remove_file(&hist);
    assert!(dist.contains("Percentile") && dist.contains("Total count    =         2000"));
}

#[test]
fn verify_catches_a_wrong_expectation() {
    let server = Server::start(&[]);
    let out = run(
        bench_bin(),
        &[
            "--addr",
            &server.addr(),
            "--connections",
            "10",
            "--bids-per-conn",
            "200",
            "--pipeline",
            "8",
            "--verify",
            "--verify-inject-error",
            "--no-progress",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(text.contains("MISMATCH"), "{text}");
    assert!(text.contains("bid_count"), "{text}");
}

#[test]
fn buys_stop_at_stock_and_verify() {
    let server = Server::start(&[]);
    let (code, j) = bench_json(
        &server.addr(),
        "buys",
        &[
            "--workload",
            "buys",
            "--stock",
            "150",
            "--connections",
            "4",
            "--bids-per-conn",
            "50",
            "--pipeline",
            "4",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "succeeded"), 200);
    assert_eq!(u(&j["outcomes"], "OK"), 150);
    assert_eq!(u(&j["outcomes"], "SOLD_OUT"), 50);
    assert_eq!(j["verify"]["ok"], true);
    assert_eq!(u(&j["verify"], "sales_checked"), 1);
}

#[test]
fn mixed_workload_with_threads_pacing_and_skew() {
    let server = Server::start(&[]);
    let (code, j) = bench_json(
        &server.addr(),
        "mixed",
        &[
            "--workload",
            "mixed",
            "--auctions",
            "7",
            "--skus",
            "3",
            "--skew",
            "zipf:1.1",
            "--threads",
            "2",
            "--connections",
            "6",
            "--connect-pacing-ms",
            "2",
            "--interval-ms",
            "1",
            "--pipeline",
            "2",
            "--bids-per-conn",
            "30",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "attempted"), 180);
    assert_eq!(u(&j, "succeeded"), 180);
    assert_eq!(u(&j, "connections_opened"), 6);
    assert_eq!(u(&j, "timeouts"), 0);
    assert_eq!(j["verify"]["ok"], true);
    assert_eq!(u(&j["verify"], "auctions_checked"), 7);
    assert_eq!(u(&j["verify"], "sales_checked"), 3);
}

#[test]
fn error_replies_are_counted_by_code() {
    let server = Server::start(&[]);
    let (code, j) = bench_json(
        &server.addr(),
        "malformed",
        &[
            "--connections",
            "10",
            "--bids-per-conn",
            "200",
            "--pipeline",
            "8",
            "--malformed-every",
            "10",
            "--verify",
        ],
    );
    // Requests the server refused were not executed: verify still passes.
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "attempted"), 2000);
    assert_eq!(u(&j, "succeeded"), 1800);
    assert_eq!(u(&j, "failed"), 200);
    assert_eq!(u(&j["errors"], "MALFORMED"), 200);
    assert_eq!(sum(&j["outcomes"]), 1800);
    assert_eq!(j["success_rate"].as_f64(), Some(0.9));
}

#[test]
fn wrong_token_is_unauthorized_and_right_token_works() {
    let server = Server::start(&["--auth-token", "right"]);
    let (code, j) = bench_json(
        &server.addr(),
        "badtoken",
        &[
            "--auth-token",
            "wrong",
            "--no-setup",
            "--connections",
            "5",
            "--bids-per-conn",
            "10",
        ],
    );
    assert_eq!(code, 3, "nothing can succeed: {j}");
    assert_eq!(u(&j["errors"], "UNAUTHORIZED"), 5);
    assert_eq!(u(&j, "handshake_failures"), 5);
    assert_eq!(u(&j, "attempted"), 0);
    assert_eq!(u(&j, "succeeded"), 0);

    let (code, j) = bench_json(
        &server.addr(),
        "goodtoken",
        &[
            "--auth-token",
            "right",
            "--connections",
            "5",
            "--bids-per-conn",
            "10",
            "--pipeline",
            "3",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "succeeded"), 50);
    assert_eq!(u(&j, "handshake_failures"), 0);
    assert!(
        j["config"].get("auth_token").is_none(),
        "token must not be echoed"
    );
}

#[test]
fn connect_failures_are_counted() {
    let (code, j) = bench_json(
        &dead_addr(),
        "refused",
        &["--no-setup", "--connections", "4", "--bids-per-conn", "5"],
    );
    assert_eq!(code, 3, "{j}");
    assert_eq!(u(&j, "connect_failures"), 4);
    assert_eq!(u(&j, "attempted"), 0);
    assert!(j["first_connect_error"].as_str().is_some());
}

#[test]
fn setup_failure_exits_1() {
    let out = run(
        bench_bin(),
        &[
            "--addr",
            &dead_addr(),
            "--bids-per-conn",
            "1",
            "--no-progress",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).contains("setup failed"));
}

#[test]
fn open_loop_duration_keeps_schedule() {
    let server = Server::start(&[]);
    let (code, j) = bench_json(
        &server.addr(),
        "rate",
        &[
            "--connections",
            "4",
            "--duration",
            "1",
            "--rate",
            "2000",
            "--pipeline",
            "16",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    let attempted = u(&j, "attempted");
    // 500 requests/s per connection for one second; a few at the very end
    // may miss the deadline on a loaded machine.
    assert!((1500..=2000).contains(&attempted), "{attempted}");
    assert_eq!(u(&j, "succeeded"), attempted);
    assert!(j["send_lag_us"].is_array());
    assert_eq!(j["verify"]["ok"], true);
}

#[test]
fn usage_errors_exit_1() {
    let out = run(bench_bin(), &["--bids-per-conn", "1", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(bench_bin(), &["--skew", "pareto"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(bench_bin(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("GAVEL_BENCH_CONNECTIONS"));
}

#[test]
fn connections_refused_at_capacity_count_busy_and_lost() {
    // The server answers connections beyond --max-connections with an ERROR
    // BUSY (request_id 0) and closes them: their pipelined bids are lost.
    let server = Server::start(&["--max-connections", "3"]);
    let (code, j) = bench_json(
        &server.addr(),
        "busy",
        &[
            "--connections",
            "6",
            "--bids-per-conn",
            "50",
            "--pipeline",
            "4",
        ],
    );
    assert_eq!(code, 0, "some connections worked: {j}");
    let busy = u(&j["errors"], "BUSY");
    assert!(busy >= 3, "{j}");
    assert_eq!(u(&j, "unmatched_replies"), busy);
    assert!(u(&j, "closed_by_server") >= 3);
    assert!(u(&j, "succeeded") < u(&j, "attempted"));
    assert!(u(&j, "lost") > 0);
    assert_eq!(
        u(&j, "succeeded") + u(&j, "failed") + u(&j, "lost"),
        u(&j, "attempted")
    );
}
