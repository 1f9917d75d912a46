//! Requests per second: N tasks over one async connection, against the
//! blocking `gavel_protocol::Client`.
//!
//! Every mode sends keyed BIDs (fresh `bid_id`s, spread over 1,000 auctions)
//! for `--seconds` and counts the replies:
//!
//! * blocking, 1 thread: one request at a time (the blocking client's
//!   natural use);
//! * blocking, N threads: each with its own connection;
//! * async, N tasks / 1 conn: N tasks sharing one `gavel_client::Client`;
//! * async, N tasks / pool of C: N tasks over a `Pool` of C connections.
//!
//! ```text
//! cargo run --release -p gavel-client --example throughput -- \
//!     [--addr ADDR] [--tasks 64] [--seconds 5] [--conns 2]
//! ```
//!
//! Without `--addr` it starts `target/release/gavel-server` (else
//! `target/debug/gavel-server`) with `--store memory` on a free port, on the
//! same machine: client and server then share its cores.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_client::{Client, Config, Pool};
use gavel_protocol::{BidRequest, OpenAuctionRequest};

const AUCTIONS: u64 = 1_000;

struct Args {
    addr: Option<String>,
    tasks: u64,
    seconds: f64,
    conns: usize,
}

fn args() -> Args {
    let mut a = Args {
        addr: None,
        tasks: 64,
        seconds: 5.0,
        conns: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = Some(v()),
            "--tasks" => a.tasks = v().parse().expect("--tasks N"),
            "--seconds" => a.seconds = v().parse().expect("--seconds S"),
            "--conns" => a.conns = v().parse().expect("--conns C"),
            _ => panic!("unknown argument {k}; see the file's docs"),
        }
    }
    a
}

/// Starts a local server; returns it and its address.
fn spawn_server() -> (Child, String) {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let bin = ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("gavel-server"))
        .find(|p| p.exists())
        .expect("no gavel-server binary: cargo build --release -p gavel-server");
    eprintln!("starting {}", bin.display());
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--store", "memory"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gavel-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (child, addr)
}

/// Bid `n` of worker `w` in mode `m`: a fresh key, a rising amount.
fn bid(m: u64, w: u64, n: u64) -> BidRequest {
    BidRequest {
        auction_id: m * AUCTIONS + (w + n) % AUCTIONS + 1,
        bidder_id: w + 1,
        amount: n + 1,
        bid_id: (w << 40) | (n + 1),
    }
}

struct Run {
    name: String,
    done: u64,
    secs: f64,
}

fn blocking(addr: &str, m: u64, threads: u64, secs: f64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..threads {
            let (stop, done) = (stop.clone(), done.clone());
            s.spawn(move || {
                let mut c = gavel_protocol::Client::connect(addr).unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let b = bid(m, w, n);
                    c.bid(b.auction_id, b.bidder_id, b.amount, b.bid_id)
                        .unwrap();
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    Run {
        name: if threads == 1 {
            "blocking, 1 thread / 1 conn".into()
        } else {
            format!("blocking, {threads} threads / {threads} conns")
        },
        done: done.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
    }
}

async fn asynchronous(pool: &Pool, name: String, m: u64, tasks: u64, secs: f64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let pool = Arc::new(pool.clone());
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..tasks {
        let (stop, pool) = (stop.clone(), pool.clone());
        set.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                pool.get().bid(bid(m, w, n)).await.unwrap();
                n += 1;
            }
            n
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    while let Some(n) = set.join_next().await {
        done += n.unwrap();
    }
    Run {
        name,
        done,
        secs: start.elapsed().as_secs_f64(),
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let (mut child, addr) = match &a.addr {
        Some(addr) => (None, addr.clone()),
        None => {
            let (c, addr) = spawn_server();
            (Some(c), addr)
        }
    };
    let client = Client::connect(Config::new(addr.clone())).await.unwrap();
    for id in 1..=4 * AUCTIONS {
        let c = client.clone();
        // Opened concurrently; OPEN_* replays on a rerun.
        tokio::spawn(async move {
            c.open_auction(OpenAuctionRequest {
                auction_id: id,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            })
            .await
            .unwrap()
        });
    }
    while client.in_flight() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Warm up the server.
    let one = Pool::connect(Config::new(addr.clone()), 1).await.unwrap();
    asynchronous(&one, String::new(), 0, a.tasks, 0.5).await;

    let mut runs = Vec::new();
    let addr2 = addr.clone();
    let secs = a.seconds;
    runs.push(tokio::task::block_in_place(|| blocking(&addr2, 0, 1, secs)));
    let tasks = a.tasks;
    runs.push(tokio::task::block_in_place(|| {
        blocking(&addr2, 1, tasks, secs)
    }));
    runs.push(
        asynchronous(
            &one,
            format!("async, {tasks} tasks / 1 conn"),
            2,
            tasks,
            secs,
        )
        .await,
    );
    let pool = Pool::connect(Config::new(addr.clone()), a.conns)
        .await
        .unwrap();
    let name = format!("async, {tasks} tasks / pool of {}", a.conns);
    runs.push(asynchronous(&pool, name, 3, tasks, secs).await);

    let base = runs[0].done as f64 / runs[0].secs;
    println!(
        "{:<36} {:>10} {:>12} {:>8}",
        "mode", "requests", "requests/s", "× base"
    );
    for r in &runs {
        let rate = r.done as f64 / r.secs;
        println!(
            "{:<36} {:>10} {:>12.0} {:>8.1}",
            r.name,
            r.done,
            rate,
            rate / base
        );
    }
    if let Some(c) = child.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
