//! Prometheus metrics: what is counted, and how it is kept cheap.
//!
//! Hot-path counts are plain `u64`s in a per-event-loop [`LoopStats`] and
//! are added to the shared atomics once per loop turn ([`Metrics::absorb`]),
//! so a request costs no atomic operation and no lock. Connections refused
//! at accept or closed by the server (idle, slow subscriber) are rare and are
//! counted on the shared metrics as they happen, before the client can see
//! the end: one that saw it and then scrapes, maybe served by another loop,
//! finds it counted. Gauges that mirror
//! state the server already keeps (open connections, shard queue depths,
//! writer queue, store health) are read when scraped. The registry and the
//! text exposition are `prometheus-client`'s; latency histograms are
//! lock-free [`AtomicHistogram`]s encoded through its `EncodeMetric` trait.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gavel_protocol::frame::msg_type;
use gavel_protocol::{ErrorCode, Status};

use crate::engine::limits::Cap;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Message types with their metric label, in a fixed order.
pub const MSG_TYPES: [(u8, &str); 19] = [
    (msg_type::HELLO, "hello"),
    (msg_type::PING, "ping"),
    (msg_type::OPEN_AUCTION, "open_auction"),
    (msg_type::BID, "bid"),
    (msg_type::CLOSE_AUCTION, "close_auction"),
    (msg_type::GET_AUCTION, "get_auction"),
    (msg_type::OPEN_SALE, "open_sale"),
    (msg_type::BUY, "buy"),
    (msg_type::GET_SALE, "get_sale"),
    (msg_type::SUBSCRIBE, "subscribe"),
    (msg_type::UNSUBSCRIBE, "unsubscribe"),
    (msg_type::WELCOME, "welcome"),
    (msg_type::PONG, "pong"),
    (msg_type::RESULT, "result"),
    (msg_type::AUCTION, "auction"),
    (msg_type::SALE, "sale"),
    (msg_type::ERROR, "error"),
    (msg_type::BID_UPDATE, "bid_update"),
    (msg_type::AUCTION_CLOSED, "auction_closed"),
];
const N_TYPES: usize = MSG_TYPES.len();
const N_STATUS: usize = 9;
/// Error codes 1..=11, indexed by code (0 unused).
const N_ERRORS: usize = ErrorCode::ALL.len() + 1;

/// Index of a message type in [`MSG_TYPES`] (unknown types share the last slot
/// of the array they are counted in; callers only pass known types).
#[inline]
pub fn type_index(t: u8) -> usize {
    match t {
        0x01 => 0,
        0x02 => 1,
        0x10..=0x13 => 2 + (t - 0x10) as usize,
        0x20..=0x22 => 6 + (t - 0x20) as usize,
        0x30 | 0x31 => 9 + (t - 0x30) as usize,
        0x81 | 0x82 => 11 + (t - 0x81) as usize,
        0x90 => 13,
        0x93 => 14,
        0xA2 => 15,
        0xBF => 16,
        0xC0 | 0xC1 => 17 + (t - 0xC0) as usize,
        _ => 16,
    }
}

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];
/// Upper bounds of the batch-size buckets, in mutations.
const BATCH_BOUNDS: [u64; 14] = [
    1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536, 262144,
];

/// A histogram of `u64` observations with fixed bounds, updated with relaxed
/// atomics (no lock), exposed in seconds or units: recorded values are
/// divided by `per_unit` (1e6 for microseconds → seconds). Clones share
/// the same counts.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
pub struct HistogramInner {
    bounds: &'static [u64],
    /// One count per bound plus +Inf.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    /// Divisor from recorded values to exposed units. A division, not a
    /// multiplication by 1e-6: bucket labels then print as `0.00005`
    /// rather than `0.000049999999999999999`.
    per_unit: f64,
}

impl std::ops::Deref for AtomicHistogram {
    type Target = HistogramInner;
    fn deref(&self) -> &HistogramInner {
        &self.0
    }
}

impl AtomicHistogram {
    fn new(bounds: &'static [u64], per_unit: f64) -> Self {
        AtomicHistogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            per_unit,
        }))
    }

    #[inline]
    fn bucket(&self, v: u64) -> usize {
        self.bounds.partition_point(|&b| b < v)
    }

    pub fn observe(&self, v: u64) {
        self.counts[self.bucket(v)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    fn add_local(&self, local: &LocalHistogram) {
        for (i, &c) in local.counts.iter().enumerate() {
            if c != 0 {
                self.counts[i].fetch_add(c, Ordering::Relaxed);
            }
        }
        self.sum.fetch_add(local.sum, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.encode_into(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl AtomicHistogram {
    /// Per-bucket counts, not cumulative: prometheus-client's encoder
    /// accumulates them itself (passing running totals counted every
    /// observation once per bucket above it).
    fn encode_into(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut total = 0u64;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            total += n;
            let upper = self
                .bounds
                .get(i)
                .map_or(f64::MAX, |&b| b as f64 / self.per_unit);
            buckets.push((upper, n));
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.per_unit;
        encoder.encode_histogram::<()>(sum, total, &buckets, None)
    }
}

/// Request latency histograms, one per request type, as one metric family.
#[derive(Debug, Clone)]
struct LatencyByType(Vec<(&'static str, AtomicHistogram)>);

impl EncodeMetric for LatencyByType {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (name, h) in &self.0 {
            let labels = [("type", *name)];
            h.encode_into(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A histogram being filled during one loop turn.
#[derive(Debug, Clone)]
pub struct LocalHistogram {
    counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    sum: u64,
    n: u64,
}

impl Default for LocalHistogram {
    fn default() -> Self {
        LocalHistogram {
            counts: [0; LATENCY_BOUNDS_US.len() + 1],
            sum: 0,
            n: 0,
        }
    }
}

impl LocalHistogram {
    #[inline]
    pub fn observe_us(&mut self, us: u64) {
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i] += 1;
        self.sum += us;
        self.n += 1;
    }
}

/// Counts one event loop gathers during a turn.
#[derive(Debug, Clone)]
pub struct LoopStats {
    pub frames_in: [u64; N_TYPES],
    pub frames_out: [u64; N_TYPES],
    pub results: [u64; N_STATUS],
    pub errors: [u64; N_ERRORS],
    pub latency: Vec<LocalHistogram>,
    /// Requests refused at each [`Cap`], indexed by `Cap as usize`.
    pub limits: [u64; Cap::ALL.len()],
    pub accepted: u64,
    /// Connections no longer read because of `--output-budget`.
    pub budget_pauses: u64,
    pub dirty: bool,
}

impl Default for LoopStats {
    fn default() -> Self {
        LoopStats {
            frames_in: [0; N_TYPES],
            frames_out: [0; N_TYPES],
            results: [0; N_STATUS],
            errors: [0; N_ERRORS],
            latency: vec![LocalHistogram::default(); N_TYPES],
            limits: [0; Cap::ALL.len()],
            accepted: 0,
            budget_pauses: 0,
            dirty: false,
        }
    }
}

impl LoopStats {
    #[inline]
    pub fn frame_in(&mut self, t: u8) {
        self.frames_in[type_index(t)] += 1;
        self.dirty = true;
    }

    #[inline]
    pub fn frame_out(&mut self, t: u8) {
        self.frames_out[type_index(t)] += 1;
        self.dirty = true;
    }

    #[inline]
    pub fn result(&mut self, s: Status) {
        self.results[s as usize] += 1;
        self.frames_out[type_index(msg_type::RESULT)] += 1;
        self.dirty = true;
    }

    #[inline]
    pub fn error(&mut self, c: ErrorCode) {
        self.errors[(c as usize).min(N_ERRORS - 1)] += 1;
        self.frames_out[type_index(msg_type::ERROR)] += 1;
        self.dirty = true;
    }

    /// A request refused at `limit` (its ERROR is counted apart).
    #[inline]
    pub fn limit(&mut self, limit: Cap) {
        self.limits[limit as usize] += 1;
        self.dirty = true;
    }

    /// Latency of a request of type `t` answered now.
    #[inline]
    pub fn latency_us(&mut self, t: u8, us: u64) {
        self.latency[type_index(t)].observe_us(us);
    }
}

/// All metrics of one server process.
pub struct Metrics {
    registry: Registry,
    frames_in: Vec<Counter>,
    frames_out: Vec<Counter>,
    results: Vec<Counter>,
    errors: Vec<Counter>,
    latency: Vec<AtomicHistogram>,
    limits: Vec<Counter>,
    pub accepted: Counter,
    refused: Family<Vec<(String, String)>, Counter>,
    closed: Family<Vec<(String, String)>, Counter>,
    pub open_connections: Gauge,
    shard_queue: Family<Vec<(String, String)>, Gauge>,
    pub bounds: BoundMetrics,
    pub store: StoreMetrics,
    pub keys: KeyMetrics,
    pub redis_round_trips: Counter,
    pub redis_seconds: AtomicHistogram,
    pub redis_errors: Counter,
    pub redis_up: Gauge,
    /// Updates this node's listener received from Redis (cross-node mode).
    pub cross_node_updates: Counter,
    /// Redis masters whose update channels this node's listener does not
    /// hold (cross-node mode).
    pub cross_node_update_masters_down: Gauge,
}

fn labels(k: &str, v: &str) -> Vec<(String, String)> {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    pub fn new(shards: usize) -> Self {
        let mut r = Registry::with_prefix("gavel");
        let types = || MSG_TYPES.iter().map(|(_, n)| *n);
        let frames_in = counters_by(
            &mut r,
            "frames_in",
            "Frames received, by message type",
            "type",
            types(),
        );
        let frames_out = counters_by(
            &mut r,
            "frames_out",
            "Frames sent, by message type",
            "type",
            types(),
        );
        let statuses = Status::ALL.iter().map(|s| s.name());
        let results = counters_by(
            &mut r,
            "results",
            "RESULT frames sent, by status",
            "status",
            statuses,
        );
        // Indexed by code; code 0 is not an error.
        let mut errors: Vec<Counter> = vec![Counter::default()];
        errors.extend(counters_by(
            &mut r,
            "errors",
            "ERROR frames sent, by code (BUSY is back-pressure)",
            "code",
            ErrorCode::ALL.iter().map(|c| c.name()),
        ));
        let latency = latency_by_type(&mut r);
        let limits = counters_by(
            &mut r,
            "limit_refusals",
            "Requests refused (ERROR BUSY) at a configured cap, by cap",
            "limit",
            Cap::ALL.iter().map(|l| l.label()),
        );
        let accepted = reg(
            &mut r,
            "connections_accepted",
            "Connections accepted",
            Counter::default(),
        );
        let refused = reg(
            &mut r,
            "connections_refused",
            "Connections refused, by reason",
            Family::<Vec<(String, String)>, Counter>::default(),
        );
        let closed = reg(
            &mut r,
            "connections_closed",
            "Connections the server closed on its own, by reason (idle: --idle-timeout, silent since accept or stalled on a frame; slow_subscriber: --subscriber-cap)",
            Family::<Vec<(String, String)>, Counter>::default(),
        );
        for reason in ["idle", "slow_subscriber"] {
            let _ = closed.get_or_create(&labels("reason", reason));
        }
        let (cross_node_updates, cross_node_update_masters_down) = update_metrics(&mut r);
        let open_connections = reg(
            &mut r,
            "connections_open",
            "Connections open, as counted against --max-connections (one half-closed after a closing ERROR no longer counts)",
            Gauge::default(),
        );
        let shard_queue = shard_queue_gauges(&mut r, shards);
        let bounds = BoundMetrics::new(&mut r);
        let store = StoreMetrics::new(&mut r);
        let keys = KeyMetrics::new(&mut r);
        let (redis_round_trips, redis_seconds, redis_errors, redis_up) = redis_metrics(&mut r);
        Metrics {
            registry: r,
            frames_in,
            frames_out,
            results,
            errors,
            latency,
            limits,
            accepted,
            refused,
            closed,
            open_connections,
            shard_queue,
            bounds,
            store,
            keys,
            redis_round_trips,
            redis_seconds,
            redis_errors,
            redis_up,
            cross_node_updates,
            cross_node_update_masters_down,
        }
    }

    /// Adds a loop turn's counts to the shared metrics and resets them.
    pub fn absorb(&self, s: &mut LoopStats) {
        if !s.dirty {
            return;
        }
        for (i, n) in s.frames_in.iter_mut().enumerate() {
            if *n != 0 {
                self.frames_in[i].inc_by(*n);
                *n = 0;
            }
        }
        for (i, n) in s.frames_out.iter_mut().enumerate() {
            if *n != 0 {
                self.frames_out[i].inc_by(*n);
                *n = 0;
            }
        }
        for (i, n) in s.results.iter_mut().enumerate() {
            if *n != 0 {
                self.results[i].inc_by(*n);
                *n = 0;
            }
        }
        for (i, n) in s.errors.iter_mut().enumerate() {
            if *n != 0 {
                self.errors[i].inc_by(*n);
                *n = 0;
            }
        }
        for (i, h) in s.latency.iter_mut().enumerate().take(self.latency.len()) {
            if h.n != 0 {
                self.latency[i].add_local(h);
                *h = LocalHistogram::default();
            }
        }
        for (i, n) in s.limits.iter_mut().enumerate() {
            if *n != 0 {
                self.limits[i].inc_by(*n);
                *n = 0;
            }
        }
        if s.accepted != 0 {
            self.accepted.inc_by(s.accepted);
            s.accepted = 0;
        }
        if s.budget_pauses != 0 {
            self.bounds.budget_pauses.inc_by(s.budget_pauses);
            s.budget_pauses = 0;
        }
        s.dirty = false;
    }

    /// Mirrors a running total kept elsewhere (e.g. `refused_per_ip`) into
    /// `connections_refused{reason}`.
    pub fn sync_refused(&self, reason: &str, total: u64) {
        let c = self.refused.get_or_create(&labels("reason", reason));
        let seen = c.get();
        if total > seen {
            c.inc_by(total - seen);
        }
    }

    /// One connection closed by the server: `idle` (`--idle-timeout`) or
    /// `slow_subscriber` (`--subscriber-cap`).
    pub fn closed(&self, reason: &str) {
        self.closed.get_or_create(&labels("reason", reason)).inc();
    }

    pub fn refused(&self, n: u64, reason: &str) {
        self.refused
            .get_or_create(&labels("reason", reason))
            .inc_by(n);
    }

    pub fn set_shard_queue(&self, shard: usize, depth: usize) {
        self.shard_queue
            .get_or_create(&labels("shard", &shard.to_string()))
            .set(depth as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// A queue-depth gauge per shard, all present from the start.
fn shard_queue_gauges(r: &mut Registry, shards: usize) -> Family<Vec<(String, String)>, Gauge> {
    let family = Family::<Vec<(String, String)>, Gauge>::default();
    for i in 0..shards {
        let _ = family.get_or_create(&labels("shard", &i.to_string()));
    }
    reg(
        r,
        "shard_queue_depth",
        "Commands waiting in each shard's queue",
        family,
    )
}

/// What the caps bound: state held, and unsent output.
pub struct BoundMetrics {
    pub auctions: Gauge,
    pub passivated: Gauge,
    pub passivated_sales: Gauge,
    pub sales: Gauge,
    pub holdings: Gauge,
    pub subscriptions: Gauge,
    pub reply_queue_full: Counter,
    pub unsent_bytes: Gauge,
    budget_pauses: Counter,
}

impl BoundMetrics {
    fn new(r: &mut Registry) -> Self {
        let auctions = reg(
            r,
            "auctions",
            "Auctions held in memory, open and closed (local engine; --max-auctions)",
            Gauge::default(),
        );
        let passivated = reg(
            r,
            "auctions_passivated",
            "Auctions (closed, or open and idle) that left memory for the store (--passivate-after; read back on demand)",
            Gauge::default(),
        );
        let passivated_sales = reg(
            r,
            "sales_passivated",
            "Sold-out or ended sales that left memory for the store (--passivate-after; read back on demand)",
            Gauge::default(),
        );
        let sales = reg(
            r,
            "sales",
            "Sales held in memory (local engine; --max-sales)",
            Gauge::default(),
        );
        let holdings = reg(
            r,
            "holdings",
            "Buyer holdings (one per buyer and sale) held in memory (local engine; --max-holdings)",
            Gauge::default(),
        );
        let subscriptions = reg(
            r,
            "subscriptions",
            "Subscriptions held by the shards (one per connection and auction)",
            Gauge::default(),
        );
        let reply_queue_full = reg(
        r,
        "reply_queue_full",
        "Times a shard or the writer found an event loop's reply queue full (--reply-queue) and waited",
        Counter::default(),
    );
        let unsent_bytes = reg(
            r,
            "output_unsent_bytes",
            "Reply bytes waiting for slow readers, all connections (--output-budget)",
            Gauge::default(),
        );
        let budget_pauses = reg(
        r,
        "output_budget_pauses",
        "Times a connection holding unsent output was no longer read because the server was over --output-budget",
        Counter::default(),
    );
        BoundMetrics {
            auctions,
            passivated,
            passivated_sales,
            sales,
            holdings,
            subscriptions,
            reply_queue_full,
            unsent_bytes,
            budget_pauses,
        }
    }
}

/// The journal writer's and the materializer's metrics.
pub struct StoreMetrics {
    pub batch_size: AtomicHistogram,
    pub flush_seconds: AtomicHistogram,
    pub journal_bytes: Counter,
    pub store_errors: Counter,
    pub writer_queue: Gauge,
    pub store_up: Gauge,
    pub lag_mutations: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub apply_seconds: AtomicHistogram,
    pub apply_batch: AtomicHistogram,
    pub quarantined: Counter,
}

impl StoreMetrics {
    fn new(r: &mut Registry) -> Self {
        let hist = |bounds: &'static [u64], per_unit| AtomicHistogram::new(bounds, per_unit);
        StoreMetrics {
            batch_size: reg(
                r,
                "writer_batch_mutations",
                "Mutations per journal commit",
                hist(&BATCH_BOUNDS, 1.0),
            ),
            flush_seconds: reg(
                r,
                "writer_flush_seconds",
                "Duration of one journal append and sync (successful or not)",
                hist(&LATENCY_BOUNDS_US, 1e6),
            ),
            journal_bytes: reg(
                r,
                "journal_bytes",
                "Bytes of journal records committed",
                Counter::default(),
            ),
            store_errors: reg(
                r,
                "store_errors",
                "Failed journal appends, table applies and pings",
                Counter::default(),
            ),
            writer_queue: reg(
                r,
                "writer_queue_mutations",
                "Mutations waiting for the journal writer",
                Gauge::default(),
            ),
            store_up: reg(
                r,
                "store_up",
                "1 when the store accepts writes (always with --store memory), 0 while the breaker is open",
                Gauge::default(),
            ),
            lag_mutations: reg(
                r,
                "materializer_lag_mutations",
                "Mutations journaled and not yet applied to the tables",
                Gauge::default(),
            ),
            lag_seconds: reg(
                r,
                "materializer_lag_seconds",
                "Age of the oldest journal record in the materializer's latest transaction",
                Gauge::default(),
            ),
            apply_seconds: reg(
                r,
                "materializer_apply_seconds",
                "Duration of one materializer transaction",
                hist(&LATENCY_BOUNDS_US, 1e6),
            ),
            quarantined: reg(
                r,
                "materializer_quarantined_records",
                "Journal records the tables refused, set aside in table quarantine",
                Counter::default(),
            ),
            apply_batch: reg(
                r,
                "materializer_batch_mutations",
                "Mutations per materializer transaction",
                hist(&BATCH_BOUNDS, 1.0),
            ),
        }
    }
}

/// Idempotency keys: how many memory holds, how many left it for the
/// store, and the lookups that ask the store about them.
pub struct KeyMetrics {
    pub in_memory: Gauge,
    pub spilled: Gauge,
    pub filter_bytes: Gauge,
    pub parked: Gauge,
    /// By [`LOOKUP_RESULTS`].
    lookups: Vec<Counter>,
    pub lookup_seconds: AtomicHistogram,
}

/// The `result` label of `gavel_idempotency_lookups_total`.
const LOOKUP_RESULTS: [&str; 5] = ["found", "absent", "auction", "sale", "failed"];

impl KeyMetrics {
    fn new(r: &mut Registry) -> Self {
        let lookups = counters_by(
            r,
            "idempotency_lookups",
            "Lookups in the store, by result: an idempotency key found or absent, a passivated auction read back, or a failure",
            "result",
            LOOKUP_RESULTS.into_iter(),
        );
        KeyMetrics {
            in_memory: reg(
                r,
                "idempotency_keys",
                "Idempotency keys held in memory (accepted and rejected)",
                Gauge::default(),
            ),
            spilled: reg(
                r,
                "idempotency_spilled_keys",
                "Accepted keys inside the window that left memory for the store (found by lookup)",
                Gauge::default(),
            ),
            filter_bytes: reg(
                r,
                "idempotency_filter_bytes",
                "Memory of the filters of keys that left memory",
                Gauge::default(),
            ),
            parked: reg(
                r,
                "idempotency_parked_commands",
                "Commands waiting for a key lookup in the store",
                Gauge::default(),
            ),
            lookups,
            lookup_seconds: reg(
                r,
                "idempotency_lookup_seconds",
                "Duration of one key lookup in the store",
                AtomicHistogram::new(&LATENCY_BOUNDS_US, 1e6),
            ),
        }
    }

    /// Counts one lookup's result: a key found or absent, an auction or a
    /// sale read back, or a failure.
    pub fn count(&self, answer: &crate::engine::parked::Answer) {
        use crate::engine::idempotency::KeyLookup;
        use crate::engine::parked::Answer;
        let i = match answer {
            Answer::Key(KeyLookup::Found(_)) => 0,
            Answer::Key(KeyLookup::Absent) => 1,
            Answer::Auction(_) => 2,
            Answer::Sale(_) => 3,
            Answer::Refused(_) => 4,
        };
        debug_assert_eq!(LOOKUP_RESULTS.len(), self.lookups.len());
        self.lookups[i].inc();
    }
}

/// Cross-node mode's update listener: updates received, masters down.
fn update_metrics(r: &mut Registry) -> (Counter, Gauge) {
    let received = reg(
        r,
        "cross_node_updates_received",
        "Bid updates and closings received from Redis (cross-node mode: only of auctions this node's clients watch)",
        Counter::default(),
    );
    let masters_down = reg(
        r,
        "cross_node_update_masters_down",
        "Redis masters (of the slot map) whose update connection is down or not yet subscribed: SUBSCRIBE on their auctions is UNAVAILABLE (cross-node mode)",
        Gauge::default(),
    );
    (received, masters_down)
}

/// Cross-node mode's metrics.
fn redis_metrics(r: &mut Registry) -> (Counter, AtomicHistogram, Counter, Gauge) {
    let redis_round_trips = reg(
        r,
        "redis_round_trips",
        "Pipelined round trips to Redis",
        Counter::default(),
    );
    let redis_seconds = reg(
        r,
        "redis_round_trip_seconds",
        "Duration of one pipelined Redis round trip",
        AtomicHistogram::new(&LATENCY_BOUNDS_US, 1e6),
    );
    let redis_errors = reg(
        r,
        "redis_errors",
        "Failed Redis round trips",
        Counter::default(),
    );
    let redis_up = reg(
        r,
        "redis_up",
        "1 when Redis answers, 0 while the breaker is open (absent without --redis)",
        Gauge::default(),
    );
    (redis_round_trips, redis_seconds, redis_errors, redis_up)
}

/// A counter per label value, registered as one family.
fn counters_by<'a>(
    r: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = &'a str>,
) -> Vec<Counter> {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    let counters = values
        .map(|v| family.get_or_create(&labels(label, v)).clone())
        .collect();
    r.register(name, help, family);
    counters
}

/// Request latency histograms, one per request type (the first 11 types).
fn latency_by_type(r: &mut Registry) -> Vec<AtomicHistogram> {
    let latency: Vec<AtomicHistogram> = (0..11)
        .map(|_| AtomicHistogram::new(&LATENCY_BOUNDS_US, 1e6))
        .collect();
    let names = MSG_TYPES.iter().take(11).map(|(_, n)| *n);
    r.register(
        "request_latency_seconds",
        "From decoding a request to encoding its reply, by request type",
        LatencyByType(names.zip(latency.iter().cloned()).collect()),
    );
    latency
}

/// Registers a metric and returns the handle kept to update it.
fn reg<M>(r: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    r.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_indexes_are_distinct_and_in_order() {
        for (i, (t, _)) in MSG_TYPES.iter().enumerate() {
            assert_eq!(type_index(*t), i, "{t:#x}");
        }
    }

    #[test]
    fn loop_stats_reach_the_exposition() {
        let m = Metrics::new(2);
        let mut s = LoopStats::default();
        for _ in 0..7 {
            s.frame_in(msg_type::BID);
            s.result(Status::Ok);
            s.latency_us(msg_type::BID, 300);
        }
        s.result(Status::Outbid);
        s.error(ErrorCode::Busy);
        m.absorb(&mut s);
        m.absorb(&mut s); // nothing twice
        let text = m.encode();
        assert!(
            text.contains("gavel_frames_in_total{type=\"bid\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("gavel_results_total{status=\"OK\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("gavel_results_total{status=\"OUTBID\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gavel_errors_total{code=\"BUSY\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gavel_request_latency_seconds_count{type=\"bid\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("gavel_request_latency_seconds_bucket{le=\"0.0005\",type=\"bid\"} 7")
                || text
                    .contains("gavel_request_latency_seconds_bucket{type=\"bid\",le=\"0.0005\"} 7"),
            "{text}"
        );
        // Buckets are cumulative once: the last one equals the count.
        let inf = text
            .lines()
            .find(|l| {
                l.starts_with("gavel_request_latency_seconds_bucket")
                    && l.contains("type=\"bid\"")
                    && l.contains("le=\"+Inf\"")
            })
            .expect("+Inf bucket");
        assert!(inf.ends_with(" 7"), "{inf}");
    }
}
