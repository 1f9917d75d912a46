//! Command-line and environment configuration of `gavel-server`.
//!
//! Every flag is also settable through a `GAVEL_*` environment variable; the
//! `--help` text is the reference for operators.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::net::rate_limit::RateSpec;
use crate::store::StoreUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    Durable,
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Gavel: a bid engine for live auctions and flash sales over a binary TLV protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "gavel-server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; the chosen address is
    /// printed on stdout as `listening on ADDR`.
    #[arg(long, env = "GAVEL_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Listen backlog (pending, not yet accepted connections). Linux silently
    /// caps it at net.core.somaxconn; a warning is logged when it does.
    #[arg(long, env = "GAVEL_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,

    /// Number of event-loop (network I/O) threads. Default: a quarter of the
    /// CPU cores, at least 1 (1 up to 7 cores, 2 on 8, 4 on 16): shards take
    /// the rest. Connections are spread over the loops by whichever accepts
    /// first; limits (--max-connections, --rate-per-bidder, ...) hold for
    /// the server as a whole.
    #[arg(long, env = "GAVEL_IO_THREADS")]
    pub io_threads: Option<usize>,

    /// Number of shard threads; each owns a disjoint set of auctions and SKUs.
    /// Default: the number of CPU cores. At most 64.
    #[arg(long, env = "GAVEL_SHARDS")]
    pub shards: Option<usize>,

    /// Commands that may wait in one shard's queue; beyond it requests are
    /// answered ERROR BUSY at once.
    #[arg(long, env = "GAVEL_SHARD_QUEUE", default_value_t = 65536)]
    pub shard_queue: usize,

    /// Where state is kept: `sqlite:PATH` (embedded, created on first start),
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB`, or `memory` (nothing survives
    /// a restart; for benchmarks and tests).
    #[arg(
        long,
        env = "GAVEL_STORE",
        default_value = "sqlite:./gavel-data/gavel.db"
    )]
    pub store: StoreUrl,

    /// When a mutating request is acknowledged. `durable`: only after the
    /// transaction holding it has committed (group commit; nothing
    /// acknowledged is ever lost). `async`: at once; a crash loses what was
    /// acknowledged but not yet committed — at most --flush-interval plus the
    /// writer's queue (--writer-queue mutations).
    #[arg(long, env = "GAVEL_ACK", value_enum, default_value_t = AckMode::Durable)]
    pub ack: AckMode,

    /// Extra wait before a journal commit, to gather more per commit. 0 (the
    /// default): commit as soon as the previous commit is done — what
    /// arrives during a commit goes together in the next one.
    #[arg(long, env = "GAVEL_FLUSH_INTERVAL", default_value = "0ms", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// The batch writer commits once this many mutations are queued, even
    /// before --flush-interval (1 = one transaction per mutation).
    #[arg(long, env = "GAVEL_BATCH_MAX", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_max: u32,

    /// Mutations that may wait for the batch writer; beyond it mutating
    /// requests are answered ERROR BUSY (bounded memory, back-pressure).
    #[arg(long, env = "GAVEL_WRITER_QUEUE", default_value_t = 262_144)]
    pub writer_queue: usize,

    /// Mutations that may be journaled (committed) but not yet applied to
    /// the queryable tables; beyond it mutating requests are answered ERROR
    /// BUSY until the materializer catches up. Bounds its memory (~64 bytes
    /// per mutation) and the journal tail a restart replays.
    #[arg(long, env = "GAVEL_MATERIALIZER_MAX_LAG", default_value_t = 2_000_000)]
    pub materializer_max_lag: usize,

    /// Fault drills and tests: the materializer waits this long before each
    /// transaction, so the journal's tail grows (restart-while-lagging).
    #[arg(long, env = "GAVEL_MATERIALIZER_PAUSE", default_value = "0ms", value_parser = parse_duration, hide = true)]
    pub materializer_pause: Duration,

    /// In durable mode, how long a request waits for a failing store before
    /// it is answered ERROR UNAVAILABLE. Also bounds connecting and each
    /// statement.
    #[arg(long, env = "GAVEL_STORE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub store_timeout: Duration,

    /// How long idempotency keys (bid_id, order_id) are remembered, e.g. 24h, 30m, 90s.
    #[arg(long, env = "GAVEL_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_window: Duration,

    /// With a durable store, how long a closed auction, or a sale that sold
    /// out or ended, stays in memory after that, and an open auction that
    /// no request names and nobody subscribes to; then it leaves (only its
    /// id stays, and an open one's end time) and is read back from the
    /// store (a sale with its holdings) by the next request naming it,
    /// which waits for that read. An open auction's end that comes while it
    /// is out is recorded as usual. Frees --max-auctions / --max-sales
    /// room. 0 keeps them in memory for ever (as --store memory always
    /// does).
    #[arg(long, env = "GAVEL_PASSIVATE_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub passivate_after: Duration,

    /// Keys of *accepted* bids and orders held in memory, across all shards
    /// (split evenly). An accepted key is never forgotten inside the window:
    /// with a durable store, past this cap the oldest accepted keys the
    /// tables already hold leave memory for the store (a ~12-bit-per-key
    /// filter tells which requests must be looked up there); with --store
    /// memory, new BIDs/BUYs on a full shard are answered ERROR BUSY (not
    /// executed) until old keys expire. 80–152 bytes per key in memory
    /// (64-byte slots, a table 44–88% full): the default holds <= 0.30 GB.
    #[arg(long, env = "GAVEL_IDEMPOTENCY_MAX_KEYS", default_value_t = 2_000_000)]
    pub idempotency_max_keys: usize,

    /// With a durable store, most memory the filter of accepted keys that
    /// left memory for the store may take, across all shards (split
    /// evenly). It grows with the accepted rate over the window (12 bits
    /// per key at a steady rate: the default holds ~170M keys, e.g. 2,000
    /// accepted bids/s for 24 h); once full no more keys leave memory and
    /// new BIDs/BUYs on a full shard get ERROR BUSY (not executed) until
    /// old keys expire — an accepted key is never forgotten.
    #[arg(
        long,
        env = "GAVEL_IDEMPOTENCY_MAX_FILTER_BYTES",
        default_value_t = 256 << 20
    )]
    pub idempotency_max_filter_bytes: usize,

    /// Upper bound on remembered keys of *rejected* bids and orders (OUTBID,
    /// SOLD_OUT, …) across all shards; the oldest are dropped first (a retry
    /// of a dropped one is evaluated afresh, which never applies it twice).
    /// 80–152 bytes per key: the default holds <= 0.15 GB.
    #[arg(
        long,
        env = "GAVEL_IDEMPOTENCY_MAX_REJECTED_KEYS",
        default_value_t = 1_000_000
    )]
    pub idempotency_max_rejected_keys: usize,

    /// When set, every connection must start with a HELLO carrying this token.
    /// Tokens are compared in constant time.
    #[arg(long, env = "GAVEL_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// File of accepted auth tokens, one per line (blank lines and `#`
    /// comments ignored); implies auth. Re-read on SIGHUP, so keys rotate
    /// without a restart (`kill -HUP PID`); connections already past HELLO
    /// stay connected. Combines with --auth-token.
    #[arg(long, env = "GAVEL_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Maximum simultaneous connections; further ones get ERROR BUSY and are closed.
    #[arg(long, env = "GAVEL_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Maximum simultaneous connections from one IP address (0 = no limit).
    /// Further ones get ERROR BUSY "too many connections from your address"
    /// and are closed at once (over TLS: closed without a reply).
    #[arg(long, env = "GAVEL_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// Per-connection rate limit, RATE[/BURST]: RATE requests per second
    /// with bursts of up to BURST (default BURST = RATE). Every request
    /// counts; one over the limit gets ERROR RATE_LIMITED, is not executed,
    /// and the connection stays open. Off by default.
    /// Example: --rate-per-conn 1000/2000
    #[arg(long, env = "GAVEL_RATE_PER_CONN", value_name = "RATE[/BURST]")]
    pub rate_per_conn: Option<RateSpec>,

    /// Per-bidder rate limit, RATE[/BURST], on BID (by bidder_id) and BUY (by
    /// buyer_id) together, whichever connections (and event loops) they come
    /// over. Off by default.
    /// Example: --rate-per-bidder 50/100
    #[arg(long, env = "GAVEL_RATE_PER_BIDDER", value_name = "RATE[/BURST]")]
    pub rate_per_bidder: Option<RateSpec>,

    /// Most bidder ids the server tracks for --rate-per-bidder (split over 32
    /// stripes by the id's hash). Idle entries are evicted every second; if
    /// a stripe is still full, its least recently used half is dropped.
    #[arg(long, env = "GAVEL_RATE_MAX_BIDDERS", default_value_t = 1_000_000)]
    pub rate_max_bidders: usize,

    /// Serve TLS with this PEM certificate chain (leaf first); needs
    /// --tls-key. Plain TCP is not served alongside.
    #[arg(long, env = "GAVEL_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "GAVEL_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest accepted frame payload in bytes (at most 65535). Larger
    /// headers get ERROR FRAME_TOO_LARGE and the connection is closed.
    #[arg(long, env = "GAVEL_MAX_PAYLOAD", default_value_t = 1024, value_parser = clap::value_parser!(u16).range(32..))]
    pub max_payload: u16,

    /// Close a connection that has sat on an incomplete frame this long, or
    /// that has not sent a complete frame (with TLS: finished its handshake
    /// and sent one) this long after it was accepted (slowloris defence;
    /// silent connections cannot hold --max-connections). A connection that
    /// has sent a frame and is simply idle is not timed out.
    #[arg(long, env = "GAVEL_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Requests one connection may have in flight before the server stops
    /// reading from it (TCP back-pressure instead of unbounded queues).
    #[arg(long, env = "GAVEL_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: u32,

    /// Unsent reply bytes at which the server stops reading a connection until it drains.
    #[arg(long, env = "GAVEL_OUTPUT_CAP", default_value_t = 256 * 1024)]
    pub output_cap: usize,

    /// Unsent reply bytes across all connections at which the server stops
    /// reading every connection that has replies waiting (those that read
    /// theirs promptly go on) until the total is back under it. Bounds what
    /// slow readers hold in memory: --output-cap alone allows that much per
    /// connection, times --max-connections.
    #[arg(long, env = "GAVEL_OUTPUT_BUDGET", default_value_t = 256 * 1024 * 1024)]
    pub output_budget: usize,

    /// Unsent bytes at which a subscriber that does not read is disconnected
    /// instead of holding pushes for it.
    #[arg(long, env = "GAVEL_SUBSCRIBER_CAP", default_value_t = 1024 * 1024)]
    pub subscriber_cap: usize,

    /// Most auctions (open and closed) held in memory, split evenly over
    /// shards; an OPEN_AUCTION for a new auction on a full shard gets ERROR
    /// BUSY "auction limit reached" (not executed; replays of existing ones
    /// still answer). ~85 bytes each (~100 with an end time): the default
    /// holds ~0.4 GB. With a durable store, auctions out of memory
    /// (--passivate-after) do not count. Applies to the local engine (in
    /// cross-node mode Redis holds the auctions).
    #[arg(long, env = "GAVEL_MAX_AUCTIONS", default_value_t = 4_000_000)]
    pub max_auctions: usize,

    /// Most sales held in memory, split evenly over shards; beyond it an
    /// OPEN_SALE for a new SKU gets ERROR BUSY "sale limit reached". ~250
    /// bytes each plus ~30 per buyer holding: the default holds ~0.25 GB.
    /// Local engine only, like --max-auctions.
    #[arg(long, env = "GAVEL_MAX_SALES", default_value_t = 1_000_000)]
    pub max_sales: usize,

    /// Most buyer holdings (one per buyer and sale: the units a buyer
    /// holds) in memory, split evenly over shards; beyond it a BUY by a
    /// buyer who holds nothing in that sale yet gets ERROR BUSY "holding
    /// limit reached" (not executed); buyers who hold some still buy. ~30
    /// bytes each: the default holds ~0.3 GB. With a durable store a
    /// finished sale's holdings leave memory with it (--passivate-after).
    #[arg(long, env = "GAVEL_MAX_HOLDINGS", default_value_t = 10_000_000)]
    pub max_holdings: usize,

    /// Reply batches that may wait for one event loop (each at most 1,024
    /// replies or pushes, ~88 bytes each): a shard or the writer that finds
    /// the queue full waits, its own queue fills, and new requests for it
    /// are answered ERROR BUSY. Bounds that memory to ~23 MB per event loop.
    #[arg(long, env = "GAVEL_REPLY_QUEUE", default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub reply_queue: usize,

    /// Most auctions one connection may be subscribed to at once. A
    /// SUBSCRIBE beyond it gets ERROR BUSY "too many subscriptions on this
    /// connection" (not executed; SUBSCRIBEs still in flight count, and an
    /// auction's closing or an UNSUBSCRIBE frees a place).
    #[arg(long, env = "GAVEL_MAX_SUBSCRIPTIONS_PER_CONN", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions_per_conn: u32,

    /// Most subscriptions (one per connection and auction) the server holds,
    /// split evenly over shards; a SUBSCRIBE on a full shard gets ERROR BUSY
    /// "subscription limit reached". ~120 bytes each (measured).
    #[arg(long, env = "GAVEL_MAX_SUBSCRIPTIONS", default_value_t = 1_000_000)]
    pub max_subscriptions: usize,

    /// SO_SNDBUF of accepted sockets in bytes; 0 leaves the kernel's
    /// autotuning in charge (the default). A small value makes a
    /// non-reading subscriber hit --subscriber-cap sooner.
    #[arg(long, env = "GAVEL_SEND_BUFFER", default_value_t = 0)]
    pub send_buffer: usize,

    /// Serve Prometheus metrics on http://ADDR/metrics, plus /healthz (the
    /// process is up) and /readyz (the store accepts writes). Off by default.
    #[arg(long, env = "GAVEL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Cross-node mode: auctions and sales live in this Redis
    /// (`redis://HOST:PORT`) and every bid and purchase is one Lua
    /// compare-and-set there, so several gavel-server nodes can serve the
    /// same auctions. The --store then only logs what this node accepted.
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]` (TCP, no TLS).
    #[arg(long, env = "GAVEL_REDIS", conflicts_with = "redis_cluster", value_parser = parse_redis_url)]
    pub redis: Option<String>,

    /// Cross-node mode on a Redis Cluster: its masters, comma-separated
    /// (`redis://h1:p1,redis://h2:p2,…`). Scripts are loaded on each.
    #[arg(long, env = "GAVEL_REDIS_CLUSTER", value_delimiter = ',', value_parser = parse_redis_url)]
    pub redis_cluster: Vec<String>,

    /// Bound on connecting to Redis and on each round trip; past it the
    /// requests of that round are answered ERROR UNAVAILABLE.
    #[arg(long, env = "GAVEL_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// In cross-node mode, answer OUTBID on this node, without a round trip,
    /// for a bid that cannot win: strictly below the highest bid this node
    /// has seen (high bids only rise), or below a bid on the same auction it
    /// has already sent to Redis (answered once that one's reply is in). Never
    /// for an auction closed or past its end. Off by default because it bends
    /// idempotency: a retry of a bid that was accepted and has since been
    /// outbid gets OUTBID instead of its replayed OK, and a locally answered
    /// bid's key is not stored. Worth it for hot auctions whose clients do
    /// not retry.
    #[arg(long, env = "GAVEL_OUTBID_FILTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub outbid_filter: bool,

    /// This node's id, reported in WELCOME.
    #[arg(long, env = "GAVEL_NODE_ID", default_value_t = 0)]
    pub node_id: u16,

    /// Period of the sweep that closes auctions whose end time has passed.
    #[arg(long, env = "GAVEL_SWEEP_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// How long shutdown waits for in-flight requests before exiting anyway.
    #[arg(long, env = "GAVEL_SHUTDOWN_GRACE", default_value = "3s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log lines a client can cause by the thousand (refused connections,
    /// bad HELLOs, idle closes, oversized frames): per kind, the first in
    /// this interval is logged, the rest summed up in one line at its end.
    #[arg(long, env = "GAVEL_LOG_SUMMARY_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub log_summary_interval: Duration,

    /// Log format on stderr. Filter with RUST_LOG (default: info).
    #[arg(long, env = "GAVEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Redis URLs and whether they form a cluster, in cross-node mode.
    pub fn redis_urls(&self) -> Option<(Vec<String>, bool)> {
        if let Some(u) = &self.redis {
            Some((vec![u.clone()], false))
        } else if !self.redis_cluster.is_empty() {
            Some((self.redis_cluster.clone(), true))
        } else {
            None
        }
    }

    /// Each shard's share of the caps on what the shards hold.
    pub fn shard_capacity(&self) -> crate::engine::limits::Capacity {
        use crate::engine::limits::Capacity;
        let total = Capacity {
            auctions: self.max_auctions,
            sales: self.max_sales,
            holdings: self.max_holdings,
            subscriptions: self.max_subscriptions,
        };
        Capacity::share(total, self.shard_count())
    }

    /// `--io-threads`, or a quarter of the cores (at least 1).
    pub fn io_thread_count(&self) -> usize {
        self.io_threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() / 4)
                    .unwrap_or(1)
            })
            .max(1)
    }

    pub fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .clamp(1, 64)
    }
}

/// A Redis URL this node can use: TCP `redis://…` (the update listener and
/// the pipelined connections read the socket themselves; the redis crate is
/// built without TLS), checked at start rather than failing at run time.
pub fn parse_redis_url(s: &str) -> Result<String, String> {
    use redis::IntoConnectionInfo;
    let hint = "expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (TCP; unix sockets and TLS are not supported)";
    if !s.starts_with("redis://") {
        return Err(format!("{s:?}: {hint}"));
    }
    match s.into_connection_info() {
        Ok(info) if matches!(info.addr, redis::ConnectionAddr::Tcp(..)) => Ok(s.to_string()),
        Ok(_) => Err(format!("{s:?}: {hint}")),
        Err(e) => Err(format!("{s:?}: {e}; {hint}")),
    }
}

/// Parses `250ms`, `2s`, `30m`, `24h`, `1d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 2s, 30m, 24h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn redis_urls_are_checked_at_start() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://cache",
            "redis://:pw@10.0.0.5:7000/2",
        ] {
            assert_eq!(parse_redis_url(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "127.0.0.1:6379",
            "rediss://cache:6380",
            "redis+unix:///run/redis.sock",
            "redis://:6379x",
        ] {
            let e = parse_redis_url(bad).unwrap_err();
            assert!(e.contains("expected redis://"), "{bad}: {e}");
        }
        let cfg = |args: &[&str]| Config::try_parse_from([&["gavel-server"], args].concat());
        assert!(cfg(&["--redis", "unix:///tmp/r.sock"]).is_err());
        assert!(cfg(&["--redis-cluster", "redis://a:1,rediss://b:2"]).is_err());
        let c = cfg(&["--redis-cluster", "redis://a:1,redis://b:2"]).unwrap();
        assert_eq!(c.redis_urls().unwrap().0.len(), 2);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
