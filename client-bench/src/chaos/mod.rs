//! `client-bench chaos`: a Jepsen-style fault harness for gavel-server.
//!
//! It starts gavel-server itself (and, as asked, a throwaway PostgreSQL
//! and/or Redis), opens auctions and sales, and runs client threads that
//! bid (rising amounts) and buy (limited stock, so sales sell out), retrying
//! every request with the same key until it gets a RESULT. A share of the
//! auctions (`--closing`, chosen from the seed) close during the run: half
//! by CLOSE_AUCTION from the clients, spread over the cycles, half at an end
//! time a few seconds after the start; bids keep coming to them (CLOSED),
//! and GET_AUCTIONs read auctions now and then. Meanwhile a
//! nemesis injects faults at random times, one or two overlapping per
//! cycle: SIGKILL + restart of gavel-server, SIGTERM + restart, SIGSTOP /
//! SIGCONT, PostgreSQL stopped (`pg_ctl -m fast` or `-m immediate`) and
//! started, Redis SIGKILLed and restarted (cross-node mode), clients
//! dropping their connection right after sending. Every answer to every
//! attempt is recorded.
//!
//! At the end the faults are healed, the clients resolve what they have in
//! progress, gavel-server is restarted cleanly (SIGTERM, start), the state
//! of every auction and sale is read, every resolved request is sent again
//! (the accepted ones must replay), the state is read again, and
//! [`check::check`] compares the history with it. Violations are printed,
//! then one line `cycles=N faults=N acked=N in_doubt=N violations=N`; the
//! exit status is 1 when there is a violation.

pub mod check;
pub mod history;
pub mod procs;
pub mod worker;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, ValueEnum};
use gavel_protocol::{Client, ClientError, ErrorCode, Request, Response, Status};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use check::{AuctionSnap, AuctionSpec, FinalState, SaleSnap, SaleSpec, Setup, Snapshot};
use history::{misuse, Answer, Attempt, Op, OpKind, Reply};
use procs::{Pg, Redis, ServerProc};
use worker::{LoadParams, Shared, Worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The embedded SQLite file (in the work directory).
    Sqlite,
    /// A throwaway PostgreSQL the harness starts (and stops, for outages).
    Postgres,
}

/// `client-bench chaos`: see the module documentation.
#[derive(Debug, Parser)]
#[command(
    name = "client-bench chaos",
    about = "Fault harness: load gavel-server while killing, pausing and cutting it off from its \
             store, then check every acknowledged outcome against the final state",
    after_help = "Prints violations, then one line `cycles=N faults=N acked=N in_doubt=N \
                  violations=N`; exits 1 on a violation, 2 when the harness itself fails. \
                  Loopback only. scripts/chaos.sh builds and runs it."
)]
pub struct ChaosConfig {
    /// Nemesis cycles (each injects one or two overlapping faults).
    #[arg(long, default_value_t = 20)]
    pub cycles: u32,
    /// gavel-server's store.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Cross-node mode: a throwaway Redis (appendonly yes, appendfsync
    /// always) holds the auctions and sales; the nemesis also kills it.
    #[arg(long)]
    pub redis: bool,
    /// The gavel-server binary.
    #[arg(long, default_value = "target/release/gavel-server")]
    pub server_bin: PathBuf,
    /// Client threads (one connection, one request in flight each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub clients: u32,
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub auctions: u64,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub skus: u64,
    /// Units each sale offers.
    #[arg(long, default_value_t = 1500)]
    pub stock: u64,
    /// Per-buyer limit of each sale.
    #[arg(long, default_value_t = 6)]
    pub per_buyer_limit: u32,
    /// Percent of the auctions closed during the run (chosen from the
    /// seed): half by CLOSE_AUCTION requests spread over the cycles, half
    /// by an end time 2-25 s after the start.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub closing: u32,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop injecting faults after this many seconds even if cycles remain
    /// (the drain, restart and checks come after).
    #[arg(long, default_value_t = 600.0)]
    pub time_limit: f64,
    /// Seconds the clients get, after the faults are healed, to resolve the
    /// requests they have in progress.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// gavel-server's --store-timeout (held replies become IN_DOUBT after it).
    #[arg(long, default_value = "1s")]
    pub store_timeout: String,
    /// Scale every fault's duration and the quiet time between cycles.
    #[arg(long, default_value_t = 1.0)]
    pub pace: f64,
    /// Faults to draw from (kill, term, pause, drop, store, redis); store
    /// needs --store postgres, redis needs --redis.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,term,pause,drop,store,redis"
    )]
    pub faults: Vec<FaultKind>,
    /// Rejected requests re-sent in the final check (all accepted ones are).
    #[arg(long, default_value_t = 20_000)]
    pub replay_rejected: usize,
    /// Where the SQLite files and the server log go (default: a fresh
    /// directory in the system temp dir, removed after a clean run).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// An extra gavel-server argument (repeatable), e.g. `--server-arg=--ack
    /// --server-arg=async` to see the checker catch acknowledged writes a
    /// crash loses.
    #[arg(long, allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Keep the work directory even after a clean run.
    #[arg(long)]
    pub keep: bool,
    /// Test of the checker: add a fabricated acknowledged bid the server
    /// never saw, which must be reported.
    #[arg(long, hide = true)]
    pub inject_violation: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    /// SIGKILL gavel-server, restart it.
    Kill,
    /// SIGTERM gavel-server (graceful), restart it.
    Term,
    /// SIGSTOP gavel-server, SIGCONT it.
    Pause,
    /// Clients close their connection right after sending.
    Drop,
    /// PostgreSQL stopped and started again.
    Store,
    /// Redis SIGKILLed and restarted.
    Redis,
}

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Term => "term",
            FaultKind::Pause => "pause",
            FaultKind::Drop => "drop",
            FaultKind::Store => "store",
            FaultKind::Redis => "redis",
        }
    }

    fn weight(self) -> u32 {
        match self {
            FaultKind::Kill | FaultKind::Store | FaultKind::Redis => 3,
            FaultKind::Pause | FaultKind::Drop => 2,
            FaultKind::Term => 1,
        }
    }

    /// How long it lasts, in ms (before `--pace`).
    fn hold_ms(self, rng: &mut SmallRng) -> u64 {
        match self {
            FaultKind::Kill | FaultKind::Term => rng.gen_range(0..=800),
            FaultKind::Pause => rng.gen_range(200..=3000),
            FaultKind::Drop => rng.gen_range(300..=2000),
            FaultKind::Store => rng.gen_range(300..=3000),
            FaultKind::Redis => rng.gen_range(200..=2500),
        }
    }
}

/// Entry point: `args` starts with the program name, then `chaos`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args: Vec<OsString> = args
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, a)| a)
        .collect();
    let cfg = match ChaosConfig::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(&cfg) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The load's fixed shape.
const RESERVE: u64 = 100;
const MIN_INCREMENT: u64 = 5;
const FIRST_AMOUNT: u64 = 1_000;
/// Below the increment: of two racing consecutive amounts, one loses.
const AMOUNT_STEP: u64 = 3;
const SKU_WINDOW: u64 = 5;
const START_TIMEOUT: Duration = Duration::from_secs(120);
const SHUTDOWN_GRACE: &str = "3s";
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Prints a line on stderr, stamped with the run's elapsed time.
fn log(epoch: Instant, msg: impl AsRef<str>) {
    let _ = writeln!(
        std::io::stderr(),
        "[{:7.1}s] {}",
        epoch.elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

/// Runs the harness; returns the number of violations.
pub fn run(cfg: &ChaosConfig) -> anyhow::Result<usize> {
    let epoch = Instant::now();
    let seed = cfg.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    if !cfg.server_bin.is_file() {
        bail!(
            "{} does not exist: build it (`cargo build --release -p gavel-server`) or pass --server-bin",
            cfg.server_bin.display()
        );
    }
    if !(cfg.time_limit > 0.0 && cfg.drain_timeout > 0.0 && cfg.pace > 0.0) {
        bail!("--time-limit, --drain-timeout and --pace must be positive");
    }
    let faults: Vec<FaultKind> = cfg
        .faults
        .iter()
        .copied()
        .filter(|f| match f {
            FaultKind::Store => cfg.store == StoreKind::Postgres,
            FaultKind::Redis => cfg.redis,
            _ => true,
        })
        .collect();
    if faults.is_empty() && cfg.cycles > 0 {
        bail!("no fault applies to this setup (--faults {:?})", cfg.faults);
    }
    let work = match &cfg.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("gavel-chaos-{}-{seed:x}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    log(
        epoch,
        format!(
            "chaos: seed {seed}, store {:?}{}, {} cycles, {} clients, work dir {}",
            cfg.store,
            if cfg.redis { " + redis" } else { "" },
            cfg.cycles,
            cfg.clients,
            work.display()
        ),
    );

    let mut pg = match cfg.store {
        StoreKind::Postgres => {
            let p = Pg::start().map_err(|e| anyhow!("PostgreSQL: {e}"))?;
            log(epoch, format!("PostgreSQL up at {}", p.url()));
            Some(p)
        }
        StoreKind::Sqlite => None,
    };
    let mut redis = if cfg.redis {
        let r = Redis::start().map_err(|e| anyhow!("Redis: {e}"))?;
        log(epoch, format!("Redis up at {}", r.url()));
        Some(r)
    } else {
        None
    };
    let store = match &pg {
        Some(p) => p.url(),
        None => format!("sqlite:{}", work.join("gavel.db").display()),
    };
    let mut args = vec![
        "--store".to_string(),
        store,
        "--store-timeout".into(),
        cfg.store_timeout.clone(),
        "--shutdown-grace".into(),
        SHUTDOWN_GRACE.into(),
    ];
    args.extend(cfg.server_arg.iter().cloned());
    if let Some(r) = &redis {
        args.extend([
            "--redis".into(),
            r.url(),
            "--redis-timeout".into(),
            "1s".into(),
        ]);
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut server = ServerProc::new(cfg.server_bin.clone(), addr, args, work.join("server.log"));
    server
        .start(START_TIMEOUT)
        .map_err(|e| anyhow!("gavel-server: {e}"))?;
    log(epoch, format!("gavel-server listening on {addr}"));

    let (setup, closes) =
        open_all(addr, cfg, epoch, seed).context("opening the auctions and sales")?;
    log(
        epoch,
        format!(
            "{} auctions to close by CLOSE_AUCTION, {} by their end time",
            closes.len(),
            setup
                .auctions
                .iter()
                .filter(|a| a.ends_ms.is_some())
                .count()
        ),
    );

    // The load.
    let shared = Arc::new(Shared {
        addr,
        epoch,
        stop: AtomicBool::new(false),
        give_up_at_ms: AtomicU64::new(0),
        drop_until_ms: AtomicU64::new(0),
        auction_steps: (0..cfg.auctions).map(|_| AtomicU64::new(0)).collect(),
        sku_window: AtomicUsize::new(0),
        closes,
        close_due: AtomicUsize::new(0),
        close_next: AtomicUsize::new(0),
        next_key: AtomicU64::new(1),
        generation: AtomicU64::new(1),
        params: LoadParams {
            auctions: cfg.auctions,
            skus: cfg.skus,
            sku_window: SKU_WINDOW.min(cfg.skus),
            bidders: 500,
            buyers: 1000,
            max_qty: 3,
            reserve: RESERVE,
            first_amount: FIRST_AMOUNT,
            amount_step: AMOUNT_STEP,
            bid_percent: 60,
            get_permille: 20,
            reclose_permille: 3,
            read_timeout: Duration::from_millis(2500),
            connect_timeout: Duration::from_secs(1),
            drop_percent: 30,
        },
    });
    let handles: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let w = Worker::new(i, shared.clone(), seed);
            std::thread::Builder::new()
                .name(format!("chaos-client-{i}"))
                .spawn(move || w.run())
                .expect("spawn client thread")
        })
        .collect();

    // The nemesis.
    let mut nemesis = Nemesis {
        epoch,
        server: &mut server,
        pg: pg.as_mut(),
        redis: redis.as_mut(),
        shared: &shared,
        rng: SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        faults,
        pace: cfg.pace,
        cycles_total: cfg.cycles,
        skus: cfg.skus,
        cycles: 0,
        injected: 0,
        by_kind: BTreeMap::new(),
        crashes: Vec::new(),
    };
    let nemesis_result = nemesis.run(Duration::from_secs_f64(cfg.time_limit));
    let heal_result = nemesis.heal_all();
    let (cycles, injected, by_kind, crashes) = (
        nemesis.cycles,
        nemesis.injected,
        nemesis.by_kind.clone(),
        nemesis.crashes.clone(),
    );
    drop(nemesis);

    // Drain: no new requests; what is in progress is resolved.
    shared.give_up_at_ms.store(
        shared.now_ms() + (cfg.drain_timeout * 1000.0) as u64,
        Ordering::Relaxed,
    );
    shared.stop.store(true, Ordering::Relaxed);
    let mut ops: Vec<Op> = Vec::new();
    for h in handles {
        ops.extend(h.join().map_err(|_| anyhow!("a client thread panicked"))?);
    }
    nemesis_result?;
    heal_result?;
    log(
        epoch,
        format!(
            "load stopped: {} requests; nemesis: {cycles} cycles, {injected} faults {:?}",
            ops.len(),
            by_kind
        ),
    );

    let mut violations: Vec<String> = crashes;

    // A clean restart, then the final state.
    match server.terminate(SHUTDOWN_WAIT) {
        Ok(st) if st.success() => {}
        Ok(st) => violations.push(format!(
            "gavel-server exited with {st} on SIGTERM with a healthy store (expected 0); log:\n{}",
            server.log_tail(20)
        )),
        Err(e) => violations.push(format!(
            "gavel-server, SIGTERM with a healthy store: {e}; log:\n{}",
            server.log_tail(20)
        )),
    }
    server
        .start(START_TIMEOUT)
        .map_err(|e| anyhow!("gavel-server after the clean restart: {e}"))?;
    log(epoch, "clean restart done; reading the final state");
    let read_at_ms = epoch.elapsed().as_millis() as u64;
    let before = snapshot(addr, &setup).context("reading the final state")?;
    let (replays, unanswered) = final_replays(addr, epoch, &ops, cfg.replay_rejected);
    let replayed_count = replays.len();
    for (idx, attempt) in replays {
        ops[idx].attempts.push(attempt);
    }
    for idx in unanswered {
        violations.push(format!(
            "accepted key got no RESULT to its final replay on a healthy server:\n    {}",
            ops[idx].describe()
        ));
    }
    let after = snapshot(addr, &setup).context("reading the state after the replays")?;
    log(
        epoch,
        format!("{replayed_count} requests re-sent after the restart; checking"),
    );

    if cfg.inject_violation {
        inject_violation(&mut ops, &setup);
    }
    let state = FinalState {
        before,
        after_replays: Some(after),
        read_at_ms,
    };
    let findings = check::check(&setup, &ops, &state);
    violations.extend(findings.violations);

    // Report.
    let acked = ops.iter().filter(|o| o.resolved()).count();
    let in_doubt = ops.iter().filter(|o| o.got_in_doubt()).count();
    let stats = Stats::of(&ops);
    log(epoch, stats.line());
    if !findings.anomalies.is_empty() {
        log(
            epoch,
            format!(
                "{} anomalies (allowed by the protocol; first ones below)",
                findings.anomalies.len()
            ),
        );
        for a in findings.anomalies.iter().take(10) {
            eprintln!("anomaly: {a}");
        }
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    const SHOWN: usize = 50;
    for (i, v) in violations.iter().enumerate().take(SHOWN) {
        writeln!(out, "violation {}: {v}", i + 1)?;
    }
    if violations.len() > SHOWN {
        writeln!(
            out,
            "… {} more violations in {}",
            violations.len() - SHOWN,
            work.join("violations.txt").display()
        )?;
    }
    if !violations.is_empty() || !findings.anomalies.is_empty() {
        let mut text = String::new();
        for v in &violations {
            text.push_str(&format!("violation: {v}\n"));
        }
        for a in &findings.anomalies {
            text.push_str(&format!("anomaly: {a}\n"));
        }
        std::fs::write(work.join("violations.txt"), text)?;
    }
    writeln!(
        out,
        "cycles={cycles} faults={injected} acked={acked} in_doubt={in_doubt} violations={}",
        violations.len()
    )?;
    drop(out);

    let _ = server.terminate(SHUTDOWN_WAIT);
    drop(server);
    drop(redis);
    drop(pg);
    if violations.is_empty() && !cfg.keep && cfg.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        log(
            epoch,
            format!(
                "work dir kept (server.log, violations.txt): {}",
                work.display()
            ),
        );
    }
    Ok(violations.len())
}

/// Counts for the stderr stats line.
#[derive(Default)]
struct Stats {
    bids: usize,
    orders: usize,
    closes: usize,
    closes_ok: usize,
    gets: usize,
    ok_bids: usize,
    ok_orders: usize,
    unknown: usize,
    /// Requests answered IN_DOUBT whose retry replayed (it had executed)
    /// or was evaluated afresh (it had not).
    in_doubt_replayed: usize,
    in_doubt_fresh: usize,
    /// Same, for requests whose answer was lost (timeout, connection).
    lost_replayed: usize,
    lost_fresh: usize,
    attempts: usize,
    answers: BTreeMap<String, usize>,
}

impl Stats {
    fn of(ops: &[Op]) -> Stats {
        let mut s = Stats::default();
        for o in ops {
            let bid = matches!(o.kind, OpKind::Bid { .. });
            match o.kind {
                OpKind::Bid { .. } => s.bids += 1,
                OpKind::Buy { .. } => s.orders += 1,
                OpKind::Close { .. } => {
                    s.closes += 1;
                    s.closes_ok += usize::from(o.accepted());
                }
                OpKind::Get { .. } => s.gets += 1,
            }
            if matches!(o.kind, OpKind::Close { .. } | OpKind::Get { .. }) {
                // Counted above; not keyed.
            } else if o.accepted() {
                if bid {
                    s.ok_bids += 1;
                } else {
                    s.ok_orders += 1;
                }
            }
            if o.maybe_executed() {
                s.unknown += 1;
            }
            let replayed = o.first_result().map(|r| r.replayed);
            let lost = o
                .attempts
                .iter()
                .any(|a| a.answer.ambiguous() && !a.answer.is_in_doubt());
            match (o.got_in_doubt(), lost, replayed) {
                (true, _, Some(true)) => s.in_doubt_replayed += 1,
                (true, _, Some(false)) => s.in_doubt_fresh += 1,
                (false, true, Some(true)) => s.lost_replayed += 1,
                (false, true, Some(false)) => s.lost_fresh += 1,
                _ => {}
            }
            for a in o.attempts.iter().filter(|a| !a.final_replay) {
                s.attempts += 1;
                let key = match a.answer {
                    Answer::Result(r) => r.status.name().to_string(),
                    Answer::Auction(v) => {
                        format!("AUCTION {}", if v.closed { "CLOSED" } else { "OPEN" })
                    }
                    other => other.to_string(),
                };
                *s.answers.entry(key).or_default() += 1;
            }
        }
        s
    }

    fn line(&self) -> String {
        format!(
            "requests: {} bids ({} OK), {} orders ({} OK), {} CLOSE_AUCTIONs ({} OK), {} \
             GET_AUCTIONs, {} outcome unknown; IN_DOUBT resolved {} replayed / {} afresh; lost answers resolved {} replayed / {} afresh; \
             {} attempts: {:?}",
            self.bids,
            self.ok_bids,
            self.orders,
            self.ok_orders,
            self.closes,
            self.closes_ok,
            self.gets,
            self.unknown,
            self.in_doubt_replayed,
            self.in_doubt_fresh,
            self.lost_replayed,
            self.lost_fresh,
            self.attempts,
            self.answers
        )
    }
}

struct Nemesis<'a> {
    epoch: Instant,
    server: &'a mut ServerProc,
    pg: Option<&'a mut Pg>,
    redis: Option<&'a mut Redis>,
    shared: &'a Shared,
    rng: SmallRng,
    faults: Vec<FaultKind>,
    pace: f64,
    cycles_total: u32,
    skus: u64,
    cycles: u32,
    injected: u32,
    by_kind: BTreeMap<&'static str, u32>,
    /// gavel-server exits the nemesis did not cause.
    crashes: Vec<String>,
}

impl Nemesis<'_> {
    fn sleep(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis((ms as f64 * self.pace) as u64));
    }

    /// A server process (or Redis) ends or begins: answers across the bump
    /// may come from different processes.
    fn bump(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn pick(&mut self, except: Option<FaultKind>) -> Option<FaultKind> {
        let choices: Vec<FaultKind> = self
            .faults
            .iter()
            .copied()
            .filter(|f| Some(*f) != except)
            .collect();
        let total: u32 = choices.iter().map(|f| f.weight()).sum();
        if total == 0 {
            return None;
        }
        let mut n = self.rng.gen_range(0..total);
        for f in choices {
            if n < f.weight() {
                return Some(f);
            }
            n -= f.weight();
        }
        None
    }

    fn run(&mut self, time_limit: Duration) -> anyhow::Result<()> {
        while self.cycles < self.cycles_total && self.epoch.elapsed() < time_limit {
            let quiet = self.rng.gen_range(200..=1000);
            self.sleep(quiet);
            self.check_crash()?;
            let outer = self.pick(None).expect("faults checked non-empty");
            let inner = if self.rng.gen_range(0..100) < 30 {
                self.pick(Some(outer))
            } else {
                None
            };
            let hold = outer.hold_ms(&mut self.rng);
            let cycle = self.cycles + 1;
            // CLOSE_AUCTIONs spread over the cycles, the last ones due as
            // the last cycle begins.
            let closes = self.shared.closes.len() as u64;
            let due = closes * u64::from(cycle) / u64::from(self.cycles_total.max(1));
            self.shared
                .close_due
                .store(due.min(closes) as usize, Ordering::Relaxed);
            self.begin(outer, cycle)?;
            if let Some(inner) = inner {
                let before = self.rng.gen_range(0..=hold / 2);
                self.sleep(before);
                self.begin(inner, cycle)?;
                let inner_hold = inner.hold_ms(&mut self.rng);
                self.sleep(inner_hold);
                self.end(inner)?;
                self.sleep(hold - before);
            } else {
                self.sleep(hold);
            }
            self.end(outer)?;
            self.ensure_server()?;
            self.cycles += 1;
            let span = self.skus.saturating_sub(SKU_WINDOW);
            let window = u64::from(self.cycles) * span / u64::from(self.cycles_total.max(1));
            self.shared
                .sku_window
                .store(window.min(span) as usize, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A gavel-server exit the nemesis did not cause is a finding; restart.
    fn check_crash(&mut self) -> anyhow::Result<()> {
        if self.record_unplanned_exit() {
            self.ensure_server()?;
        }
        Ok(())
    }

    /// Records a gavel-server exit nobody caused (a finding); true if so.
    fn record_unplanned_exit(&mut self) -> bool {
        let Some(st) = self.server.poll_exit() else {
            return false;
        };
        self.bump();
        let msg = format!(
            "gavel-server exited by itself ({st}); its log ends:\n{}",
            self.server.log_tail(20)
        );
        log(self.epoch, &msg);
        self.crashes.push(msg);
        true
    }

    fn begin(&mut self, f: FaultKind, cycle: u32) -> anyhow::Result<()> {
        self.injected += 1;
        *self.by_kind.entry(f.name()).or_default() += 1;
        let what = match f {
            FaultKind::Kill => {
                self.check_crash()?;
                self.bump();
                self.server.kill();
                "SIGKILL gavel-server".to_string()
            }
            FaultKind::Term => {
                self.check_crash()?;
                if self.server.running() {
                    self.bump();
                    match self.server.terminate(SHUTDOWN_WAIT) {
                        Ok(st) => format!("SIGTERM gavel-server (exited: {st})"),
                        Err(e) => format!("SIGTERM gavel-server: {e}"),
                    }
                } else {
                    "SIGTERM gavel-server (already down)".to_string()
                }
            }
            FaultKind::Pause => {
                self.server.pause();
                "SIGSTOP gavel-server".to_string()
            }
            FaultKind::Drop => {
                self.shared.drop_until_ms.store(u64::MAX, Ordering::Relaxed);
                "clients drop connections mid-request".to_string()
            }
            FaultKind::Store => {
                let immediate = self.rng.gen_bool(0.5);
                let pg = self.pg.as_mut().expect("store fault needs postgres");
                pg.stop(immediate)
                    .map_err(|e| anyhow!("stopping PostgreSQL: {e}"))?;
                format!(
                    "PostgreSQL stopped (pg_ctl -m {})",
                    if immediate { "immediate" } else { "fast" }
                )
            }
            FaultKind::Redis => {
                self.bump();
                self.redis
                    .as_mut()
                    .expect("redis fault needs --redis")
                    .kill();
                "SIGKILL redis-server".to_string()
            }
        };
        log(self.epoch, format!("cycle {cycle}: {what}"));
        Ok(())
    }

    fn end(&mut self, f: FaultKind) -> anyhow::Result<()> {
        match f {
            FaultKind::Kill | FaultKind::Term => self.ensure_server()?,
            FaultKind::Pause => {
                if self.server.paused() {
                    self.server.resume();
                    log(self.epoch, "  SIGCONT gavel-server");
                }
            }
            FaultKind::Drop => {
                self.shared.drop_until_ms.store(0, Ordering::Relaxed);
                log(self.epoch, "  clients stop dropping");
            }
            FaultKind::Store => {
                if let Some(pg) = self.pg.as_mut() {
                    pg.start_again()
                        .map_err(|e| anyhow!("starting PostgreSQL again: {e}"))?;
                    log(self.epoch, "  PostgreSQL started");
                }
                self.ensure_server()?;
            }
            FaultKind::Redis => {
                if let Some(r) = self.redis.as_mut() {
                    r.restart().map_err(|e| anyhow!("restarting Redis: {e}"))?;
                    self.bump();
                    log(self.epoch, "  redis-server restarted");
                }
                self.ensure_server()?;
            }
        }
        Ok(())
    }

    /// Starts gavel-server if it is down. A start that fails while a store
    /// it needs is down is retried when the store is back; otherwise it is
    /// fatal.
    fn ensure_server(&mut self) -> anyhow::Result<()> {
        self.record_unplanned_exit();
        if self.server.running() {
            return Ok(());
        }
        let store_down =
            self.pg.as_ref().is_some_and(|p| p.down) || self.redis.as_ref().is_some_and(|r| r.down);
        let t0 = Instant::now();
        let started = self.server.start(START_TIMEOUT);
        self.bump();
        match started {
            Ok(()) => {
                log(
                    self.epoch,
                    format!("  gavel-server restarted ({} ms)", t0.elapsed().as_millis()),
                );
                Ok(())
            }
            Err(e) if store_down => {
                log(
                    self.epoch,
                    format!(
                        "  gavel-server did not start with its store down (retried later): {}",
                        e.lines().next().unwrap_or_default()
                    ),
                );
                Ok(())
            }
            Err(e) => Err(anyhow!("gavel-server failed to restart: {e}")),
        }
    }

    /// Ends every fault (used at the end and after an error).
    fn heal_all(&mut self) -> anyhow::Result<()> {
        self.shared.drop_until_ms.store(0, Ordering::Relaxed);
        if self.server.paused() {
            self.server.resume();
        }
        if let Some(pg) = self.pg.as_mut() {
            if pg.down {
                pg.start_again()
                    .map_err(|e| anyhow!("starting PostgreSQL again: {e}"))?;
            }
        }
        if let Some(r) = self.redis.as_mut() {
            if r.down {
                r.restart().map_err(|e| anyhow!("restarting Redis: {e}"))?;
                self.bump();
            }
        }
        self.ensure_server()
    }
}

/// A blocking connection with the harness's timeouts.
fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    let c = Client::from_stream(s)?;
    c.set_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

/// Sends `req` until it gets an answer that is not a transient error.
fn call_until(
    addr: SocketAddr,
    conn: &mut Option<Client>,
    req: &Request,
) -> anyhow::Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if conn.is_none() {
            match connect(addr) {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    last = e.to_string();
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        match c.call(req) {
            Ok(f) => match f.body {
                Response::Error { code, .. }
                    if matches!(
                        code,
                        ErrorCode::Busy
                            | ErrorCode::Unavailable
                            | ErrorCode::InDoubt
                            | ErrorCode::ShuttingDown
                            | ErrorCode::RateLimited
                    ) =>
                {
                    last = code.name().to_string();
                    if code.closes_connection() {
                        *conn = None;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                body => return Ok(body),
            },
            Err(e) => {
                last = e.to_string();
                *conn = None;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    bail!("{req:?} got no answer within 60 s (last: {last})")
}

/// Opens the auctions and sales. Of the auctions, `--closing` percent are
/// to close during the run: half end 2-25 s from now (their end, in ms
/// since `epoch`, is in their [`AuctionSpec`]), the others are returned, to
/// be closed by CLOSE_AUCTION.
fn open_all(
    addr: SocketAddr,
    cfg: &ChaosConfig,
    epoch: Instant,
    seed: u64,
) -> anyhow::Result<(Setup, Vec<u64>)> {
    let ends = crate::setup::now_ms() + 7 * 24 * 3600 * 1000;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xC105_E0F0_A0C7_1045);
    let mut conn = None;
    let mut closes = Vec::new();
    let mut setup = Setup {
        in_doubt_means_applied: !cfg.redis,
        ..Setup::default()
    };
    for id in 1..=cfg.auctions {
        let roll = rng.gen_range(0..200);
        let (ends_at_ms, ends_ms) = if roll < cfg.closing {
            // Read both clocks together: the end in the server's (wall)
            // clock and in the harness's.
            let d = rng.gen_range(2_000..=25_000);
            (
                crate::setup::now_ms() + d,
                Some(epoch.elapsed().as_millis() as u64 + d),
            )
        } else {
            if roll < 2 * cfg.closing {
                closes.push(id);
            }
            (ends, None)
        };
        let req = Request::OpenAuction(gavel_protocol::OpenAuctionRequest {
            auction_id: id,
            reserve: RESERVE,
            min_increment: MIN_INCREMENT,
            ends_at_ms,
        });
        match call_until(addr, &mut conn, &req)? {
            Response::Result(r) if r.status == Status::Ok => {}
            other => bail!("OPEN_AUCTION {id}: {other:?}"),
        }
        setup.auctions.push(AuctionSpec {
            id,
            reserve: RESERVE,
            min_increment: MIN_INCREMENT,
            ends_ms,
        });
    }
    for sku in 1..=cfg.skus {
        let req = Request::OpenSale(gavel_protocol::OpenSaleRequest {
            sku_id: sku,
            stock: cfg.stock,
            per_buyer_limit: cfg.per_buyer_limit,
            starts_at_ms: 0,
            ends_at_ms: ends,
        });
        match call_until(addr, &mut conn, &req)? {
            Response::Result(r) if r.status == Status::Ok => {}
            other => bail!("OPEN_SALE {sku}: {other:?}"),
        }
        setup.sales.push(SaleSpec {
            sku,
            stock: cfg.stock,
            per_buyer_limit: cfg.per_buyer_limit,
        });
    }
    Ok((setup, closes))
}

/// Every auction and sale as the server shows them now.
fn snapshot(addr: SocketAddr, setup: &Setup) -> anyhow::Result<Snapshot> {
    let mut conn = None;
    let mut s = Snapshot::default();
    for a in &setup.auctions {
        let got = match call_until(addr, &mut conn, &Request::GetAuction { auction_id: a.id })? {
            Response::Auction(i) => Some(AuctionSnap {
                closed: i.state == gavel_protocol::AuctionState::Closed,
                high_bid: i.high_bid,
                high_bidder: i.high_bidder,
                bid_count: i.bid_count,
            }),
            Response::Result(r) if r.status == Status::NotFound => None,
            other => bail!("GET_AUCTION {}: {other:?}", a.id),
        };
        s.auctions.insert(a.id, got);
    }
    for sale in &setup.sales {
        let got = match call_until(addr, &mut conn, &Request::GetSale { sku_id: sale.sku })? {
            Response::Sale(i) => Some(SaleSnap {
                stock: i.stock,
                sold: i.sold,
            }),
            Response::Result(r) if r.status == Status::NotFound => None,
            other => bail!("GET_SALE {}: {other:?}", sale.sku),
        };
        s.sales.insert(sale.sku, got);
    }
    Ok(s)
}

/// Answers to record (op index, attempt), and the ops left without one.
type ReplayOut = (Vec<(usize, Attempt)>, Vec<usize>);

/// Re-sends every accepted request and every CLOSE_AUCTION that got a
/// RESULT, and up to `max_rejected` rejected bids and orders (pipelined, on
/// a few connections), until each gets a RESULT. Returns the answers to
/// record, and the accepted requests that never got one.
fn final_replays(addr: SocketAddr, epoch: Instant, ops: &[Op], max_rejected: usize) -> ReplayOut {
    let keyed = |o: &Op| matches!(o.kind, OpKind::Bid { .. } | OpKind::Buy { .. });
    let mut idx: Vec<usize> = (0..ops.len())
        .filter(|&i| {
            ops[i].accepted() || (matches!(ops[i].kind, OpKind::Close { .. }) && ops[i].resolved())
        })
        .collect();
    let rejected: Vec<usize> = (0..ops.len())
        .filter(|&i| keyed(&ops[i]) && ops[i].resolved() && !ops[i].accepted())
        .collect();
    let stride = (rejected.len() / max_rejected.max(1)).max(1);
    idx.extend(rejected.iter().step_by(stride).take(max_rejected));
    let threads = 4usize;
    let chunks: Vec<Vec<usize>> = (0..threads)
        .map(|t| idx.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let results: Vec<ReplayOut> = std::thread::scope(|s| {
        let hs: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || replay_chunk(addr, epoch, ops, chunk)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("replay thread"))
            .collect()
    });
    let mut answers = Vec::new();
    let mut missing = Vec::new();
    for (a, m) in results {
        answers.extend(a);
        missing.extend(m.into_iter().filter(|&i| ops[i].accepted()));
    }
    (answers, missing)
}

fn replay_chunk(addr: SocketAddr, epoch: Instant, ops: &[Op], mut todo: Vec<usize>) -> ReplayOut {
    const BATCH: usize = 256;
    let mut out = Vec::new();
    let mut conn: Option<Client> = None;
    for round in 0..30 {
        if todo.is_empty() {
            break;
        }
        if round > 0 {
            std::thread::sleep(Duration::from_millis(100 * round.min(10)));
        }
        let mut retry = Vec::new();
        for batch in todo.chunks(BATCH) {
            if conn.is_none() {
                match connect(addr) {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        retry.extend_from_slice(batch);
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected");
            let rids: Vec<u32> = batch
                .iter()
                .map(|&i| c.send(&ops[i].kind.request()))
                .collect();
            if c.flush().is_err() {
                conn = None;
                retry.extend_from_slice(batch);
                continue;
            }
            for (k, (&i, rid)) in batch.iter().zip(rids).enumerate() {
                match c.recv_for(rid) {
                    Ok(f) => {
                        let at_ms = epoch.elapsed().as_millis() as u64;
                        let replayed = f.replayed();
                        match f.body {
                            Response::Result(r) => out.push((
                                i,
                                Attempt {
                                    at_ms,
                                    answer: Answer::Result(Reply::new(
                                        r.status, r.value, r.aux, replayed,
                                    )),
                                    final_replay: true,
                                    gen_sent: u64::MAX,
                                    gen_answered: u64::MAX,
                                },
                            )),
                            Response::Error { code, .. } if misuse(code as u16) => out.push((
                                i,
                                Attempt {
                                    at_ms,
                                    answer: Answer::Error(code as u16),
                                    final_replay: true,
                                    gen_sent: u64::MAX,
                                    gen_answered: u64::MAX,
                                },
                            )),
                            _ => retry.push(i),
                        }
                    }
                    Err(_) => {
                        conn = None;
                        retry.extend_from_slice(&batch[k..]);
                        break;
                    }
                }
            }
        }
        todo = retry;
    }
    (out, todo)
}

/// `--inject-violation`: a fabricated acknowledged bid, above anything the
/// server could have, on the first auction.
fn inject_violation(ops: &mut Vec<Op>, setup: &Setup) {
    let Some(a) = setup.auctions.first() else {
        return;
    };
    let amount = u64::MAX / 2;
    let mut op = Op::new(
        OpKind::Bid {
            auction: a.id,
            bidder: 1,
            amount,
            bid_id: u64::MAX,
        },
        u32::MAX,
    );
    op.push(0, Answer::Result(Reply::new(Status::Ok, amount, 1, false)));
    ops.push(op);
}
