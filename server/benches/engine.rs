//! Engine-only benchmarks: the local shard state machine and the Redis
//! engine's pure decisions, in process, on one thread, with no I/O.
//!
//! `cargo bench -p gavel-server --bench engine` (elements = commands).
//!
//! What is measured:
//!
//! - `engine/bid` and `engine/buy`: [`ShardState::execute_batch`] (as the
//!   local shard backend calls it) over rounds of 8,192 commands,
//!   idempotency check and remember included, then the
//!   round's release as the shard runner does with `--store memory` (the
//!   reused [`Effects`]' replies and mutations cleared), and every 50th round
//!   the sweep that expires keys (`--sweep-interval` 50 ms). Building the
//!   commands is not timed.
//!
//!   The clock advances 1 ms per round (≈ 8.2M commands/s, the rate the
//!   issue aims at) and the idempotency window is 128 ms: ≈ 1M keys are
//!   live just after a sweep, ≈ 1.46M just before the next (50 rounds'
//!   worth). A steady state: every sweep expires as many keys as 50 rounds
//!   remember, the key map holds a loaded shard's worth of keys (far more
//!   than the CPU caches) and never answers BUSY (the accepted budget, 4M,
//!   is above the ≈ 1.3M accepted keys at most). The rejected budget
//!   (256 Ki) binds only where many bids lose (hot auction, buys): there
//!   each remembered rejected key first drops the oldest one. Each setup
//!   runs a window and two sweep periods of rounds untimed first.
//!
//!   - `rising_10k_auctions`: bids on 10,000 pre-opened auctions picked
//!     uniformly; 7 in 8 raise the high bid by 1–10 (accepted), 1 in 8 bids
//!     the current high bid (a tie: OUTBID). Every bid has a fresh bid_id.
//!   - `rising_10k_auctions_64k_keys`: the same with an 8 ms window swept
//!     every round: 64–72 Ki live keys, a map of ≈ 10 MB instead of
//!     ≈ 200 MB: how much of a bid is the key map's size (cache and TLB
//!     misses).
//!   - `rising_10k_auctions_take_replies`: the same as the first, but the
//!     replies `Vec` is handed away each round (`mem::take`, as `release()`
//!     gives it to the event loop), so the engine regrows it every round.
//!   - `hot_auction`: one auction and a herd: in each group of 16 bids (one
//!     pipeline) every bidder saw the same price and bids 1–4 above it; the
//!     first wins, later ones only if higher still, so ≈ 1 in 8 is accepted.
//!   - `engine/buy/mixed_100_skus`: buys over 100 pre-opened sales from
//!     5,000 buyers, 1–3 units: 65 unlimited sales with ample stock (OK),
//!     25 with a limit of 2 per buyer (mostly LIMIT_EXCEEDED once warm),
//!     10 with 1,000 units (SOLD_OUT once warm).
//!
//! - `engine/decide`: the Redis engine's decisions without a socket:
//!   [`Decisions::plan`] for each command of a round, then
//!   [`Decisions::finish_round`] with one [`OpResult`] per planned op.
//!   The results come from a small model of Redis (high bid per auction)
//!   and are built untimed; only plan and finish_round are timed.
//!   - `rising_10k_auctions`: as above, OUTBID filter off (the default):
//!     every bid goes to Redis.
//!   - `hot_auction` / `hot_auction_filter`: one auction, a herd in which
//!     every bid of a round saw the price of the previous round (a round
//!     trip), without and with `--outbid-filter`; with it, three in four
//!     are answered without Redis (a bid equal to the highest one in flight
//!     still goes: it may be that bid's retry).
//!
//! - `engine/memory` (runs with no filter or a filter containing
//!   "memory"): heap bytes, counted by this binary's global allocator, per
//!   remembered idempotency key and per idle open auction, in memory and
//!   out of it (passivated with a durable store).
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! so other processes on a shared box do not count as engine time (they
//! still share its caches); `GAVEL_BENCH_WALL=1` times wall-clock instead.
//! The counting allocator costs an atomic add per allocation; the measured
//! paths allocate rarely (each benchmark prints its allocations per command,
//! the outcomes of its commands and the heap it holds).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use gavel_protocol::{
    BidRequest, BuyRequest, ErrorCode, OpenAuctionRequest, OpenSaleRequest, ResultPayload, Status,
};
use gavel_redis::{Op as ROp, OpResult};
use gavel_server::cluster::decide::{Decisions, Round, RoundOutcome};
use gavel_server::engine::auction::Auction;
use gavel_server::engine::command::{Command, ConnRef, Op, Outgoing, Reply};
use gavel_server::engine::effects::Effects;
use gavel_server::engine::idempotency::{IdempotencyStore, Key, KeyBudget, KeyKind};
use gavel_server::engine::mutation::Mutation;
use gavel_server::engine::state::ShardState;

// ---------------------------------------------------------------------------
// Heap accounting.

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

impl Counting {
    fn grew(by: usize) {
        let now = LIVE.fetch_add(by, Relaxed) + by;
        PEAK.fetch_max(now, Relaxed);
        ALLOCS.fetch_add(1, Relaxed);
        ALLOCATED.fetch_add(by as u64, Relaxed);
    }
}

// SAFETY: every call is forwarded to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            Counting::grew(l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            Counting::grew(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, l, new_size);
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Relaxed);
            Counting::grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn heap() -> usize {
    LIVE.load(Relaxed)
}

/// Allocations so far, and bytes allocated.
fn allocs() -> (u64, u64) {
    (ALLOCS.load(Relaxed), ALLOCATED.load(Relaxed))
}

// ---------------------------------------------------------------------------
// Timing: this thread's CPU time, or wall-clock with GAVEL_BENCH_WALL=1.

fn wall_clock() -> bool {
    static WALL: OnceLock<bool> = OnceLock::new();
    *WALL.get_or_init(|| std::env::var_os("GAVEL_BENCH_WALL").is_some_and(|v| v == "1"))
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Starts timing a section; `.elapsed()` ends it.
enum Timer {
    Wall(Instant),
    Cpu(Duration),
}

impl Timer {
    fn start() -> Self {
        if wall_clock() {
            Timer::Wall(Instant::now())
        } else {
            Timer::Cpu(thread_cpu())
        }
    }

    fn elapsed(&self) -> Duration {
        match self {
            Timer::Wall(t) => t.elapsed(),
            Timer::Cpu(t) => thread_cpu().saturating_sub(*t),
        }
    }
}

// ---------------------------------------------------------------------------
// Shared setup.

/// Commands per round: the shard runner's `MAX_COMMANDS_PER_ROUND`.
const BATCH: usize = 8192;
/// Connections the commands come from (100 × pipeline 16 in the issue).
const CONNS: u64 = 100;
const PIPELINE: usize = 16;
/// Virtual clock: ms per round, and a start in 2023.
const MS_PER_ROUND: u64 = 1;
const T0: u64 = 1_700_000_000_000;
/// Rounds between sweeps: `--sweep-interval` 50 ms at 1 ms per round.
const SWEEP_EVERY: u64 = 50;
/// ≈ 1M live keys: 128 rounds of 8,192 commands.
const WINDOW_MS: u64 = 128;
const SMALL_WINDOW_MS: u64 = 8;
const BUDGET: KeyBudget = KeyBudget {
    accepted: 4 << 20,
    rejected: 256 << 10,
};
const AUCTIONS: u64 = 10_000;
const AUCTION_BASE: u64 = 1_000_000;
const HOT_AUCTION: u64 = 42;
const SKUS: u64 = 100;
const SKU_BASE: u64 = 500;
const BUYERS: u64 = 5_000;

/// splitmix64: cheap and good enough for picking auctions and amounts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Stamps commands as if from `CONNS` connections on one event loop.
struct Source {
    seq: u64,
    rng: Rng,
}

impl Source {
    fn new(seed: u64) -> Self {
        Source {
            seq: 0,
            rng: Rng(seed),
        }
    }

    fn command(&mut self, op: Op) -> Command {
        self.seq += 1;
        Command {
            conn: ConnRef {
                io: 0,
                slot: (self.seq % CONNS) as u32,
                gen: 1,
            },
            request_id: self.seq as u32,
            op,
            t0_us: self.seq as u32,
            kind: 0,
        }
    }

    /// A fresh idempotency key (never 0).
    fn key(&self) -> u64 {
        self.seq + 1
    }
}

fn open_auction(auction_id: u64) -> Op {
    Op::OpenAuction(OpenAuctionRequest {
        auction_id,
        reserve: 0,
        min_increment: 1,
        ends_at_ms: 0,
    })
}

fn bid(auction_id: u64, bidder_id: u64, amount: u64, bid_id: u64) -> Op {
    Op::Bid(BidRequest {
        auction_id,
        bidder_id,
        amount,
        bid_id,
    })
}

/// Produces the commands of one round.
trait Workload {
    /// Commands run once, untimed, before the first round (opens).
    fn setup(&mut self) -> Vec<Command>;
    fn fill(&mut self, out: &mut Vec<Command>);
}

/// Rising bids over `AUCTIONS` auctions.
struct Rising {
    src: Source,
    highs: Vec<u64>,
}

impl Rising {
    fn new() -> Self {
        Rising {
            src: Source::new(1),
            highs: vec![0; AUCTIONS as usize],
        }
    }

    fn next_bid(&mut self) -> Op {
        let r = self.src.rng.next();
        let i = (r % AUCTIONS) as usize;
        let high = &mut self.highs[i];
        let amount = if (r >> 32).is_multiple_of(8) {
            *high // a tie: OUTBID
        } else {
            *high + 1 + (r >> 40) % 10
        };
        *high = amount;
        let bidder = 1 + (r >> 48) % 100_000;
        bid(AUCTION_BASE + i as u64, bidder, amount, self.src.key())
    }
}

impl Workload for Rising {
    fn setup(&mut self) -> Vec<Command> {
        (0..AUCTIONS)
            .map(|i| self.src.command(open_auction(AUCTION_BASE + i)))
            .collect()
    }

    fn fill(&mut self, out: &mut Vec<Command>) {
        out.clear();
        for _ in 0..BATCH {
            let op = self.next_bid();
            out.push(self.src.command(op));
        }
    }
}

/// A herd on one auction: each pipeline's bidders saw the same price.
struct Hot {
    src: Source,
    high: u64,
}

impl Hot {
    fn new() -> Self {
        Hot {
            src: Source::new(2),
            high: 0,
        }
    }

    /// One round in which each group of 16 saw `price()` when it sent.
    fn fill_seen(&mut self, out: &mut Vec<Command>, stale_for_round: bool) {
        out.clear();
        let round_price = self.high;
        for g in 0..BATCH / PIPELINE {
            let seen = if stale_for_round {
                round_price
            } else {
                self.high
            };
            for j in 0..PIPELINE {
                let r = self.src.rng.next();
                let amount = seen + 1 + r % 4;
                self.high = self.high.max(amount);
                let bidder = 1 + ((g * PIPELINE + j) as u64 % CONNS);
                let op = bid(HOT_AUCTION, bidder, amount, self.src.key());
                out.push(self.src.command(op));
            }
        }
    }
}

impl Workload for Hot {
    fn setup(&mut self) -> Vec<Command> {
        vec![self.src.command(open_auction(HOT_AUCTION))]
    }

    fn fill(&mut self, out: &mut Vec<Command>) {
        self.fill_seen(out, false);
    }
}

/// Mixed buys over `SKUS` sales.
struct Buys {
    src: Source,
}

impl Buys {
    /// (stock, per-buyer limit) of the sale at index `i`.
    fn sale(i: u64) -> (u64, u32) {
        if i.is_multiple_of(4) {
            (u64::MAX / 2, 2)
        } else if i % 10 == 5 {
            (1_000, 0)
        } else {
            (u64::MAX / 2, 0)
        }
    }
}

impl Workload for Buys {
    fn setup(&mut self) -> Vec<Command> {
        (0..SKUS)
            .map(|i| {
                let (stock, per_buyer_limit) = Buys::sale(i);
                self.src.command(Op::OpenSale(OpenSaleRequest {
                    sku_id: SKU_BASE + i,
                    stock,
                    per_buyer_limit,
                    starts_at_ms: 0,
                    ends_at_ms: 0,
                }))
            })
            .collect()
    }

    fn fill(&mut self, out: &mut Vec<Command>) {
        out.clear();
        for _ in 0..BATCH {
            let r = self.src.rng.next();
            let op = Op::Buy(BuyRequest {
                sku_id: SKU_BASE + r % SKUS,
                buyer_id: 1 + (r >> 16) % BUYERS,
                quantity: 1 + ((r >> 40) % 3) as u32,
                order_id: self.src.key(),
            });
            out.push(self.src.command(op));
        }
    }
}

/// Counts replies by status (index 9: an ERROR).
#[derive(Default)]
struct Tally {
    counts: [u64; 10],
    errors: Vec<ErrorCode>,
}

impl Tally {
    fn add(&mut self, replies: &[Outgoing]) {
        for o in replies {
            match o.reply {
                Reply::Result { result, .. } => self.counts[result.status as usize] += 1,
                Reply::Error { code, .. } => {
                    self.counts[9] += 1;
                    if self.errors.len() < 4 {
                        self.errors.push(code);
                    }
                }
                _ => {}
            }
        }
    }

    fn summary(&self) -> String {
        let total: u64 = self.counts.iter().sum::<u64>().max(1);
        let mut parts: Vec<String> = Status::ALL
            .iter()
            .filter(|s| self.counts[**s as usize] > 0)
            .map(|s| {
                let pct = 100.0 * self.counts[*s as usize] as f64 / total as f64;
                format!("{s:?} {pct:.1}%")
            })
            .collect();
        if self.counts[9] > 0 {
            parts.push(format!("ERROR {} ({:?}…)", self.counts[9], self.errors));
        }
        parts.join(", ")
    }
}

/// Per-benchmark allocation figures over the timed rounds.
#[derive(Default)]
struct Allocs {
    allocs: u64,
    bytes: u64,
    commands: u64,
}

impl Allocs {
    /// Adds what was allocated between `from` and `to` (from [`allocs`]).
    fn add(&mut self, from: (u64, u64), to: (u64, u64)) {
        self.allocs += to.0 - from.0;
        self.bytes += to.1 - from.1;
    }

    fn report(&self, name: &str, setup: &str) {
        let cmds = self.commands.max(1) as f64;
        println!(
            "{name}: {setup}; while timed: {} allocations ({:.1} per million commands), \
             {:.1} bytes allocated per command",
            self.allocs,
            self.allocs as f64 * 1e6 / cmds,
            self.bytes as f64 / cmds
        );
    }
}

// ---------------------------------------------------------------------------
// engine/bid and engine/buy: the local shard state machine.

/// How a local benchmark runs its shard.
#[derive(Clone, Copy)]
struct Shape {
    window_ms: u64,
    /// Rounds between sweeps.
    sweep_every: u64,
    /// Hand the replies `Vec` away each round instead of clearing it.
    take_replies: bool,
}

/// The shape of a loaded shard: ≈ 1M keys after a sweep, ≈ 1.5M before.
const LOADED: Shape = Shape {
    window_ms: WINDOW_MS,
    sweep_every: SWEEP_EVERY,
    take_replies: false,
};

impl Shape {
    /// Keys remembered just after a sweep and just before the next one.
    fn live_keys(&self) -> (u64, u64) {
        let after = self.window_ms / MS_PER_ROUND * BATCH as u64;
        (after, after + self.sweep_every * BATCH as u64)
    }
}

struct Local<W: Workload> {
    st: ShardState,
    fx: Effects,
    work: W,
    cmds: Vec<Command>,
    now_ms: u64,
    rounds: u64,
    shape: Shape,
    allocs: Allocs,
    mix: String,
}

impl<W: Workload> Local<W> {
    fn new(mut work: W, shape: Shape) -> Self {
        let mut st = ShardState::new(shape.window_ms, BUDGET);
        let mut fx = Effects::new(1);
        for c in work.setup() {
            st.execute(&c, T0, &mut fx);
        }
        let mut me = Local {
            st,
            fx,
            work,
            cmds: Vec::with_capacity(BATCH),
            now_ms: T0,
            rounds: 0,
            shape,
            allocs: Allocs::default(),
            mix: String::new(),
        };
        me.release();
        // Reach the steady state: a window's worth of rounds and two sweeps,
        // tallying outcomes over the last window.
        let warm = shape.window_ms / MS_PER_ROUND;
        let mut tally = Tally::default();
        for i in 0..warm + 2 * shape.sweep_every {
            me.work.fill(&mut me.cmds);
            me.execute_round();
            if i >= 2 * shape.sweep_every {
                tally.add(&me.fx.replies[0]);
            }
            me.release();
        }
        me.mix = tally.summary();
        me
    }

    fn execute_round(&mut self) {
        self.now_ms += MS_PER_ROUND;
        self.rounds += 1;
        self.st.execute_batch(&self.cmds, self.now_ms, &mut self.fx);
        if self.rounds.is_multiple_of(self.shape.sweep_every) {
            self.fx.unstamp();
            self.st.sweep(self.now_ms, &mut self.fx);
        }
    }

    /// As the runner's `release()` with the memory store.
    fn release(&mut self) {
        self.fx.mutations.clear();
        for r in &mut self.fx.replies {
            if self.shape.take_replies {
                black_box(std::mem::take(r));
            } else {
                r.clear();
            }
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.work.fill(&mut self.cmds);
            let a0 = allocs();
            let t = Timer::start();
            self.execute_round();
            self.release();
            total += t.elapsed();
            self.allocs.add(a0, allocs());
            self.allocs.commands += BATCH as u64;
        }
        total
    }
}

fn bench_local<W: Workload>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group: &str,
    name: &str,
    make: impl Fn() -> W,
    shape: Shape,
) {
    let mut state: Option<(Local<W>, usize)> = None;
    g.bench_function(name, |b| {
        let (s, _) = state.get_or_insert_with(|| {
            let before = heap();
            let s = Local::new(make(), shape);
            let held = heap() - before;
            (s, held)
        });
        b.iter_custom(|iters| s.run(iters));
    });
    if let Some((s, held)) = state {
        let (lo, hi) = shape.live_keys();
        let setup = format!(
            "outcomes {}; {lo}–{hi} keys live, heap {:.1} MiB after setup",
            s.mix,
            mib(held)
        );
        s.allocs.report(&format!("{group}/{name}"), &setup);
    }
}

fn bid_group(c: &mut Criterion) {
    const BID: &str = "engine/bid";
    let mut g = c.benchmark_group(BID);
    g.throughput(Throughput::Elements(BATCH as u64));
    bench_local(&mut g, BID, "rising_10k_auctions", Rising::new, LOADED);
    let small = Shape {
        window_ms: SMALL_WINDOW_MS,
        sweep_every: 1,
        ..LOADED
    };
    let name = "rising_10k_auctions_64k_keys";
    bench_local(&mut g, BID, name, Rising::new, small);
    let take = Shape {
        take_replies: true,
        ..LOADED
    };
    let name = "rising_10k_auctions_take_replies";
    bench_local(&mut g, BID, name, Rising::new, take);
    bench_local(&mut g, BID, "hot_auction", Hot::new, LOADED);
    g.finish();
}

fn buy_group(c: &mut Criterion) {
    const BUY: &str = "engine/buy";
    let mut g = c.benchmark_group(BUY);
    g.throughput(Throughput::Elements(BATCH as u64));
    let buys = || Buys {
        src: Source::new(3),
    };
    bench_local(&mut g, BUY, "mixed_100_skus", buys, LOADED);
    g.finish();
}

// ---------------------------------------------------------------------------
// engine/decide: the Redis engine's decisions.

/// What Redis holds of one auction, to answer the planned ops.
#[derive(Clone, Copy, Default)]
struct Model {
    high: u64,
    bidder: u64,
    count: u64,
}

enum DecideLoad {
    Rising(Rising),
    Hot(Hot),
}

struct Decide {
    d: Decisions,
    round: Round,
    fx: Effects,
    load: DecideLoad,
    cmds: Vec<Command>,
    /// Indexed by auction_id - AUCTION_BASE (the hot auction: index 0).
    redis: Vec<Model>,
    now_ms: u64,
    allocs: Allocs,
    tally: Tally,
    to_redis: u64,
    planned: u64,
}

impl Decide {
    fn new(load: DecideLoad, outbid_filter: bool) -> Self {
        let mut me = Decide {
            d: Decisions::new(outbid_filter),
            round: Round::default(),
            fx: Effects::new(1),
            load,
            cmds: Vec::with_capacity(BATCH),
            redis: vec![Model::default(); AUCTIONS as usize],
            now_ms: T0,
            allocs: Allocs::default(),
            tally: Tally::default(),
            to_redis: 0,
            planned: 0,
        };
        for i in 0..2 * SWEEP_EVERY {
            me.fill();
            me.plan();
            let results = me.redis_answers();
            me.finish(results);
            if i >= SWEEP_EVERY {
                me.tally.add(&me.fx.replies[0]);
            }
            me.release();
        }
        me
    }

    fn fill(&mut self) {
        match &mut self.load {
            DecideLoad::Rising(w) => w.fill(&mut self.cmds),
            DecideLoad::Hot(w) => {
                // The herd saw the price Redis had after the last round.
                w.high = self.redis[0].high;
                w.fill_seen(&mut self.cmds, true);
            }
        }
    }

    fn plan(&mut self) {
        self.now_ms += MS_PER_ROUND;
        for c in &self.cmds {
            self.d.plan(c, self.now_ms, true, &mut self.round);
        }
    }

    fn slot(auction_id: u64) -> usize {
        if auction_id == HOT_AUCTION {
            0
        } else {
            (auction_id - AUCTION_BASE) as usize
        }
    }

    /// Redis's answers to the round's ops, as the Lua scripts would give them.
    fn redis_answers(&mut self) -> Vec<OpResult> {
        self.planned += self.round.pending.len() as u64;
        self.to_redis += self.round.ops.len() as u64;
        let mut out = Vec::with_capacity(self.round.ops.len());
        for op in &self.round.ops {
            let ROp::Bid(b) = *op else {
                unreachable!("only bids are planned")
            };
            let m = &mut self.redis[Decide::slot(b.auction_id)];
            let status = if b.amount > m.high {
                (m.high, m.bidder) = (b.amount, b.bidder_id);
                m.count += 1;
                Status::Ok
            } else {
                Status::Outbid
            };
            out.push(OpResult::Outcome {
                result: ResultPayload::new(status, m.high, m.bidder),
                replayed: false,
                bid_count: m.count,
                ends_ms: 0,
            });
        }
        out
    }

    fn finish(&mut self, results: Vec<OpResult>) {
        let outcome = RoundOutcome::Answered(results);
        self.d
            .finish_round(&self.round.pending, outcome, self.now_ms, &mut self.fx);
        self.round.ops.clear();
        self.round.pending.clear();
    }

    fn release(&mut self) {
        self.fx.mutations.clear();
        for r in &mut self.fx.replies {
            r.clear();
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.fill();
            let a0 = allocs();
            let t = Timer::start();
            self.plan();
            total += t.elapsed();
            let a1 = allocs();
            let results = self.redis_answers();
            let a2 = allocs();
            let t = Timer::start();
            self.finish(results);
            self.release();
            total += t.elapsed();
            self.allocs.add(a0, a1);
            self.allocs.add(a2, allocs());
            self.allocs.commands += BATCH as u64;
        }
        total
    }
}

/// A benchmark's name, its workload and whether the OUTBID filter is on.
type DecideCase = (&'static str, fn() -> DecideLoad, bool);

fn decide_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/decide");
    g.throughput(Throughput::Elements(BATCH as u64));
    let cases: [DecideCase; 3] = [
        (
            "rising_10k_auctions",
            || DecideLoad::Rising(Rising::new()),
            false,
        ),
        ("hot_auction", || DecideLoad::Hot(Hot::new()), false),
        ("hot_auction_filter", || DecideLoad::Hot(Hot::new()), true),
    ];
    for (name, load, filter) in cases {
        let mut state: Option<Decide> = None;
        g.bench_function(name, |b| {
            let s = state.get_or_insert_with(|| Decide::new(load(), filter));
            b.iter_custom(|iters| s.run(iters));
        });
        if let Some(s) = state {
            let sent = 100.0 * s.to_redis as f64 / s.planned.max(1) as f64;
            let setup = format!(
                "outcomes {}; {sent:.1}% of commands sent to Redis",
                s.tally.summary()
            );
            s.allocs.report(&format!("engine/decide/{name}"), &setup);
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// engine/memory: heap bytes per remembered key and per idle auction.

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Heap bytes per remembered (accepted) key in the idempotency store alone,
/// at checkpoints from 0.5M to 4M keys: the key table grows by splitting
/// 32 Ki-slot segments (load 7/8 just before a split, 7/16 just after), and
/// keys hash evenly, so the segments split at about the same count and the
/// figure is a sawtooth (64-byte slots plus 5 bytes of side arrays each).
fn memory_keys() {
    let base = heap();
    PEAK.store(base, Relaxed);
    let budget = KeyBudget {
        accepted: usize::MAX / 2,
        rejected: 1,
    };
    let mut s = IdempotencyStore::new(24 * 3_600_000, budget);
    let ok = ResultPayload::new(Status::Ok, 100, 7);
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    let mut points = Vec::new();
    const N: u64 = 4_000_000;
    for n in 0..N {
        let key = Key {
            kind: KeyKind::Bid,
            scope: AUCTION_BASE + n % AUCTIONS,
            key: n + 1,
        };
        s.remember(key, (n % 100_000, n), ok, T0 + n / BATCH as u64);
        let count = n + 1;
        if count >= 500_000 && count.is_multiple_of(100_000) {
            let per = (heap() - base) as f64 / count as f64;
            lo = lo.min(per);
            hi = hi.max(per);
            if count.is_multiple_of(500_000) || [900_000, 1_800_000, 3_600_000].contains(&count) {
                points.push(format!("{:.1}M {per:.0}", count as f64 / 1e6));
            }
        }
    }
    assert_eq!(s.len() as u64, N);
    let peak = PEAK.load(Relaxed) - base;
    println!(
        "engine/memory: remembered key, B/key at N keys: {}; range {lo:.0}–{hi:.0} B/key; \
         heap peak {:.0} MiB on the way to 4M keys",
        points.join(", "),
        mib(peak)
    );
    drop(s);
}

/// Opens auctions `AUCTION_BASE..+n` at `T0` (replies and mutations
/// dropped as they come).
fn open_auctions(st: &mut ShardState, src: &mut Source, n: u64, ends_at_ms: u64, fx: &mut Effects) {
    for i in 0..n {
        let c = src.command(Op::OpenAuction(OpenAuctionRequest {
            auction_id: AUCTION_BASE + i,
            reserve: 0,
            min_increment: 1,
            ends_at_ms,
        }));
        st.execute(&c, T0, fx);
        if fx.replies[0].len() >= BATCH {
            fx.replies[0].clear();
            fx.mutations.clear();
        }
    }
}

/// Opens `n` auctions on a fresh shard and returns heap bytes per auction
/// (the reused Effects' buffers excluded).
fn heap_per_auction(n: u64, ends_at_ms: u64, bids: bool) -> (f64, usize) {
    let mut fx = Effects::new(1);
    fx.replies[0].reserve(2 * BATCH);
    fx.mutations.reserve(2 * BATCH);
    let base = heap();
    let mut st = ShardState::new(
        24 * 3_600_000,
        KeyBudget {
            accepted: 20_000_000,
            rejected: 2_000_000,
        },
    );
    let mut src = Source::new(4);
    open_auctions(&mut st, &mut src, n, ends_at_ms, &mut fx);
    if bids {
        for i in 0..n {
            let op = bid(AUCTION_BASE + i, 1 + i % 100_000, 10, src.key());
            let c = src.command(op);
            st.execute(&c, T0 + 1, &mut fx);
            if fx.replies[0].len() >= BATCH {
                fx.replies[0].clear();
                fx.mutations.clear();
            }
        }
    }
    assert_eq!(st.auction_count() as u64, n);
    let total = heap() - base;
    drop(st);
    (total as f64 / n as f64, total)
}

/// Opens `n` idle auctions on a shard backed by a store, lets them all
/// leave memory (passivation), and returns heap bytes per auction left.
fn heap_per_passivated_auction(n: u64, ends_at_ms: u64) -> f64 {
    let mut fx = Effects::new(1);
    let base = heap();
    let mut st = ShardState::new(24 * 3_600_000, BUDGET);
    st.back_with_store(Some(1_000));
    let mut src = Source::new(5);
    open_auctions(&mut st, &mut src, n, ends_at_ms, &mut fx);
    st.keys_applied(n); // the tables hold every opening
    let mut sweeps = 0;
    while st.auction_count() > 0 {
        st.sweep(T0 + 10_000, &mut fx);
        sweeps += 1;
        assert!(sweeps < n, "idle auctions do not leave");
    }
    assert_eq!(st.sizes().passivated as u64, n);
    drop(fx);
    let total = heap() - base;
    drop(st);
    total as f64 / n as f64
}

fn memory_report() {
    println!(
        "engine/memory: size_of Auction {} B, Key {} B, Command {} B, Outgoing {} B, Mutation {} B",
        std::mem::size_of::<Auction>(),
        std::mem::size_of::<Key>(),
        std::mem::size_of::<Command>(),
        std::mem::size_of::<Outgoing>(),
        std::mem::size_of::<Mutation>(),
    );
    memory_keys();
    const N: u64 = 1_000_000;
    let (no_end, _) = heap_per_auction(N, 0, false);
    let (with_end, _) = heap_per_auction(N, T0 + 3_600_000, false);
    println!(
        "engine/memory: idle open auction (1M open): {no_end:.1} B/auction without an end \
         time, {with_end:.1} B/auction with one (its deadline heap entry)"
    );
    let out_no_end = heap_per_passivated_auction(N, 0);
    let out_with_end = heap_per_passivated_auction(N, T0 + 3_600_000);
    println!(
        "engine/memory: idle open auction out of memory (1M passivated, durable store): \
         {out_no_end:.1} B/auction without an end time, {out_with_end:.1} B/auction with one"
    );
    let (per, total) = heap_per_auction(N, T0 + 3_600_000, true);
    println!(
        "engine/memory: 1M auctions (with end times) + 1M accepted bids (one each): \
         {:.1} MiB heap ({per:.1} B per auction+bid)",
        mib(total)
    );
}

// ---------------------------------------------------------------------------

criterion_group!(benches, bid_group, buy_group, decide_group);

/// Criterion's options that take a value (so what follows is not a filter).
const VALUE_OPTIONS: &[&str] = &[
    "-c",
    "--color",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// The memory report runs under `cargo bench` (not `cargo test`, not while
/// profiling, not for `--list`) with no filter or one naming "memory".
fn wants_memory_report() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |f: &str| {
        args.iter()
            .any(|a| a == f || a.starts_with(&format!("{f}=")))
    };
    if !has("--bench") || has("--profile-time") || has("--list") {
        return false;
    }
    let mut filter = None;
    let mut skip = false;
    for a in &args {
        if skip {
            skip = false;
        } else if VALUE_OPTIONS.contains(&a.as_str()) {
            skip = true;
        } else if !a.starts_with('-') && filter.is_none() {
            filter = Some(a.clone());
        }
    }
    filter.is_none_or(|f| f.contains("memory"))
}

fn main() {
    if wants_memory_report() {
        memory_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
