//! `client-bench --target redis` against a throwaway redis-server: setup
//! opens the run's auctions and sales in Redis, every request is accounted
//! for, and `--verify` reads the state back from Redis.

mod common;

use common::{bench_bin, run, stderr, stdout, temp_path};
use gavel_testkit::redis::{raw_command, RedisServer};
use serde_json::Value;

fn bench_json(name: &str, args: &[&str]) -> (i32, Value) {
    let path = temp_path(&format!("{name}.json"));
    let _ = std::fs::remove_file(&path);
    let p = path.to_str().unwrap().to_string();
    let mut all = vec!["--target", "redis", "--json", &p, "--no-progress"];
    all.extend_from_slice(args);
    let out = run(bench_bin(), &all);
    let code = out.status.code().expect("exit code");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no JSON written ({e}); stdout: {}; stderr: {}",
            stdout(&out),
            stderr(&out)
        )
    });
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
fn accounting_is_exact_and_verify_passes_on_redis() {
    let r = RedisServer::start();
    let url = r.url();
    let (code, j) = bench_json(
        "redis-accounting",
        &[
            "--redis-url",
            &url,
            "--connections",
            "12",
            "--threads",
            "2",
            "--pipeline",
            "8",
            "--bids-per-conn",
            "250",
            "--workload",
            "mixed",
            "--auctions",
            "3",
            "--skus",
            "2",
            "--id-base",
            "1000",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "attempted"), 3000);
    assert_eq!(u(&j, "succeeded"), 3000);
    assert_eq!(u(&j, "lost"), 0);
    assert_eq!(sum(&j["outcomes"]), 3000, "{j}");
    assert!(j["outcomes"]["OK"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["verify"]["ok"], Value::Bool(true), "{j}");

    // The state really is in Redis, under the scripts' keys.
    // (A bulk string holding a positive decimal count: the scripts' own
    // encoding of it is theirs to choose.)
    let positive = |reply: &str| {
        reply.starts_with('$')
            && reply
                .lines()
                .nth(1)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
    };
    let h = raw_command(r.port(), "HGET gavel:{a:1000} count").unwrap();
    assert!(positive(&h), "{h}");
    let sold = raw_command(r.port(), "HGET gavel:{s:1001} sold").unwrap();
    assert!(positive(&sold), "{sold}");

    // --verify really compares: a perturbed expectation is caught (exit 2).
    let (code, j) = bench_json(
        "redis-again",
        &[
            "--redis-url",
            &url,
            "--connections",
            "4",
            "--bids-per-conn",
            "50",
            "--auctions",
            "3",
            "--id-base",
            "5000",
            "--verify",
            "--verify-inject-error",
        ],
    );
    assert_eq!(code, 2, "an injected mismatch must fail --verify: {j}");
    assert_eq!(u(&j, "succeeded"), 200);
}

#[test]
fn duration_runs_drain_every_reply() {
    let r = RedisServer::start();
    let (code, j) = bench_json(
        "redis-duration",
        &[
            "--redis-url",
            &r.url(),
            "--connections",
            "16",
            "--pipeline",
            "16",
            "--duration",
            "0.5",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    let attempted = u(&j, "attempted");
    assert!(attempted > 0);
    assert_eq!(u(&j, "succeeded"), attempted, "{j}");
    assert_eq!(u(&j, "lost"), 0, "{j}");
    assert_eq!(j["verify"]["ok"], Value::Bool(true), "{j}");
}

#[test]
fn password_from_the_url() {
    let r = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}", r.port());
    let (code, j) = bench_json(
        "redis-auth",
        &[
            "--redis-url",
            &url,
            "--connections",
            "2",
            "--bids-per-conn",
            "20",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "succeeded"), 40);
    assert!(
        !j.to_string().contains("s3cret"),
        "password leaked into JSON: {j}"
    );

    // A wrong password: setup cannot even connect.
    let out = run(
        bench_bin(),
        &[
            "--target",
            "redis",
            "--redis-url",
            &format!("redis://:wrong@127.0.0.1:{}", r.port()),
            "--bids-per-conn",
            "1",
            "--no-progress",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn unreachable_redis_fails_setup_quickly() {
    let dead = common::dead_addr();
    let started = std::time::Instant::now();
    let out = run(
        bench_bin(),
        &[
            "--target",
            "redis",
            "--redis-url",
            &format!("redis://{dead}"),
            "--bids-per-conn",
            "1",
            "--timeout-secs",
            "2",
            "--no-progress",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("setup failed"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn buys_sell_exactly_the_stock_on_redis() {
    let r = RedisServer::start();
    let (code, j) = bench_json(
        "redis-buys",
        &[
            "--redis-url",
            &r.url(),
            "--connections",
            "8",
            "--pipeline",
            "4",
            "--bids-per-conn",
            "50",
            "--workload",
            "buys",
            "--skus",
            "1",
            "--stock",
            "100",
            "--id-base",
            "7000",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(u(&j, "attempted"), 400);
    assert_eq!(u(&j, "succeeded"), 400, "{j}");
    assert_eq!(u(&j, "lost"), 0, "{j}");
    // Every unit sold exactly once, the rest refused.
    assert_eq!(j["outcomes"]["OK"].as_u64(), Some(100), "{j}");
    assert_eq!(j["outcomes"]["SOLD_OUT"].as_u64(), Some(300), "{j}");
    assert_eq!(j["verify"]["ok"], Value::Bool(true), "{j}");
    let sold = raw_command(r.port(), "HGET gavel:{s:7000} sold").unwrap();
    assert!(sold.ends_with("100\r\n"), "{sold}");
}
