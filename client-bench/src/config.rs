//! Command line of `client-bench` and the run plan derived from it.
//!
//! Every flag is also read from a `GAVEL_BENCH_*` environment variable (the
//! flag wins). [`BenchConfig`] is what the user typed; [`Plan`] is the
//! validated, resolved form the driver runs (defaults filled in, ids chosen).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde::{Serialize, Serializer};

use crate::transport::TlsPlan;

/// Which requests the load phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// BID on the run's auctions, with increasing amounts.
    Bids,
    /// BUY one unit of the run's sales.
    Buys,
    /// Half bids, half buys, chosen at random per request.
    Mixed,
}

/// How bid amounts are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bidding {
    /// One shared counter per auction advances with every bid issued, plus
    /// jitter: bids keep rising, most can win. Measures the accept path.
    Climb,
    /// A herd chasing the price: each bid is one step above the highest
    /// price any reply of this run has shown for the auction (plus jitter).
    /// Bids built on a stale price lose, as on a hot lot where everyone
    /// reacts to the same ticker; this is where a server's local OUTBID
    /// filter pays.
    Chase,
}

impl Workload {
    pub fn uses_auctions(self) -> bool {
        matches!(self, Workload::Bids | Workload::Mixed)
    }

    pub fn uses_sales(self) -> bool {
        matches!(self, Workload::Buys | Workload::Mixed)
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Bids => "bids",
            Workload::Buys => "buys",
            Workload::Mixed => "mixed",
        }
    }
}

/// Which server protocol the driver speaks; the driver reaches the protocol
/// through [`crate::target::Target`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// gavel-server, binary TLV wire v1.
    Gavel,
    /// Redis itself (--redis-url): every bid/buy is one EVALSHA of Gavel's
    /// Lua scripts (the gavel-redis crate), the one-CAS-per-request baseline.
    Redis,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Gavel => "gavel",
            TargetKind::Redis => "redis",
        }
    }
}

/// Where `--target redis` sends its commands, from `--redis-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisPlan {
    /// The URL as given (for the redis crate in setup and verify).
    pub url: String,
    /// `host:port` for the load connections.
    pub addr: String,
    /// Password for `AUTH`, if the URL has one.
    pub password: Option<String>,
}

impl RedisPlan {
    /// Parses `redis://[:password@]host[:port][/0]` (port 6379 by default).
    pub fn parse(url: &str) -> Result<RedisPlan, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("--redis-url {url:?}: expected redis://host:port"))?;
        let (rest, db) = match rest.split_once('/') {
            Some((r, db)) => (r, db),
            None => (rest, ""),
        };
        if !(db.is_empty() || db == "0") {
            return Err(format!(
                "--redis-url {url:?}: only database 0 is supported (Redis Cluster has no other)"
            ));
        }
        let (password, hostport) = match rest.rsplit_once('@') {
            Some((cred, hp)) => match cred.split_once(':') {
                Some(("", pw)) if !pw.is_empty() => (Some(pw.to_string()), hp),
                _ => {
                    return Err(format!(
                        "--redis-url {url:?}: credentials must be `:password@` (no user name)"
                    ))
                }
            },
            None => (None, rest),
        };
        if hostport.is_empty() {
            return Err(format!("--redis-url {url:?}: no host"));
        }
        let has_port = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with('[') && p.chars().all(|c| c.is_ascii_digit()))
            && !hostport.ends_with(']');
        let addr = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        Ok(RedisPlan {
            url: url.to_string(),
            addr,
            password,
        })
    }
}

fn redact_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => match u.rsplit_once('@') {
            Some((_, hp)) => s.serialize_some(&format!("redis://***@{hp}")),
            None => s.serialize_some(u),
        },
        None => s.serialize_none(),
    }
}

/// How requests spread over the run's auctions or SKUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skew {
    /// Every key equally likely.
    Uniform,
    /// Key `i` (0-based) chosen with weight `1 / (i + 1)^s`.
    Zipf(f64),
    /// Connection `c` always uses key `c mod N`: no two connections share a
    /// key when N >= --connections, so outcomes do not depend on how the
    /// server interleaves connections.
    PerConn,
}

impl FromStr for Skew {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("uniform") {
            return Ok(Skew::Uniform);
        }
        if s.eq_ignore_ascii_case("per-conn") {
            return Ok(Skew::PerConn);
        }
        if let Some(exp) = s.strip_prefix("zipf:") {
            let v: f64 = exp
                .parse()
                .map_err(|_| format!("invalid zipf exponent {exp:?}: expected e.g. zipf:1.1"))?;
            if !v.is_finite() || v < 0.0 {
                return Err(format!(
                    "zipf exponent must be a finite number >= 0, got {v}"
                ));
            }
            return Ok(Skew::Zipf(v));
        }
        Err(format!(
            "invalid skew {s:?}: expected `uniform`, `zipf:S` or `per-conn`"
        ))
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::Uniform => f.write_str("uniform"),
            Skew::Zipf(s) => write!(f, "zipf:{s}"),
            Skew::PerConn => f.write_str("per-conn"),
        }
    }
}

impl Serialize for Skew {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Load generator for gavel-server: many connections, pipelined requests,
/// closed-loop or open-loop (--rate), honest accounting and HDR latencies.
///
/// A run has three phases. Setup opens the auctions (reserve 0, min_increment 1,
/// no end) and sales (--stock units, no per-buyer limit) the run uses, on a
/// separate connection. Load drives the connections: each keeps up to
/// --pipeline requests in flight until it has sent --bids-per-conn requests or
/// --duration has passed, then half-closes and reads every outstanding reply
/// until the server's EOF. With --verify, the state is read back and checked.
///
/// Accounting: `attempted` counts requests issued; `succeeded` counts those
/// answered by a RESULT (any business outcome, OK or not); `failed` counts those
/// answered by an ERROR frame (broken down by code); `lost` counts those never
/// answered (the connection closed or timed out first).
///
/// Exit status: 0 on a completed run; 1 on usage, setup or I/O problems; 2 when
/// --verify found a mismatch; 3 when the run meant to send requests but none
/// succeeded (e.g. every connection was refused).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "client-bench", version, about, long_about)]
pub struct BenchConfig {
    /// Server address (host:port).
    #[arg(long, env = "GAVEL_BENCH_ADDR", default_value = "127.0.0.1:7070")]
    pub addr: String,

    /// Protocol of the server under test.
    #[arg(long, env = "GAVEL_BENCH_TARGET", value_enum, default_value_t = TargetKind::Gavel)]
    pub target: TargetKind,

    /// With `--target redis`: the Redis to drive, `redis://[:password@]host[:port]`
    /// (default redis://127.0.0.1:6379). Replaces --addr. Setup opens the run's
    /// auctions/sales there (loading the scripts), --verify reads them back.
    #[arg(long, env = "GAVEL_BENCH_REDIS_URL", hide_env_values = true)]
    #[serde(serialize_with = "redact_url")]
    pub redis_url: Option<String>,

    /// Number of load connections.
    #[arg(long, env = "GAVEL_BENCH_CONNECTIONS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// Delay between opening successive connections, in ms (0 = all at once).
    #[arg(long, env = "GAVEL_BENCH_CONNECT_PACING_MS", default_value_t = 0)]
    pub connect_pacing_ms: u64,

    /// Requests each connection sends (bids, buys or both, per --workload).
    /// Exclusive with --duration; without either, the run lasts 10 s.
    #[arg(
        long,
        visible_alias = "requests-per-conn",
        env = "GAVEL_BENCH_BIDS_PER_CONN",
        conflicts_with = "duration"
    )]
    pub bids_per_conn: Option<u64>,

    /// Stop issuing requests after this many seconds (fractions allowed); the
    /// replies still in flight are then drained.
    #[arg(long, env = "GAVEL_BENCH_DURATION")]
    pub duration: Option<f64>,

    /// Think time in ms: a slot of a connection's pipeline becomes free this
    /// long after the reply that freed it (closed loop only).
    #[arg(
        long,
        env = "GAVEL_BENCH_INTERVAL_MS",
        default_value_t = 0,
        conflicts_with = "rate"
    )]
    pub interval_ms: u64,

    /// Requests each connection keeps in flight (pipelining depth).
    #[arg(long, env = "GAVEL_BENCH_PIPELINE", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=65534))]
    pub pipeline: u32,

    /// Open loop: target total requests per second, spread evenly over the
    /// connections. Latency is then measured from each request's intended send
    /// time, so queueing behind a slow reply is counted (no coordinated
    /// omission). A request due while its connection's pipeline is full waits.
    #[arg(long, env = "GAVEL_BENCH_RATE")]
    pub rate: Option<f64>,

    /// What to send.
    #[arg(long, env = "GAVEL_BENCH_WORKLOAD", value_enum, default_value_t = Workload::Bids)]
    pub workload: Workload,

    /// Number of auctions the bids spread over.
    #[arg(long, env = "GAVEL_BENCH_AUCTIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auctions: u32,

    /// Number of sales (SKUs) the buys spread over.
    #[arg(long, env = "GAVEL_BENCH_SKUS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub skus: u32,

    /// Stock of each sale opened in setup.
    #[arg(long, env = "GAVEL_BENCH_STOCK", default_value_t = 1_000_000_000)]
    pub stock: u64,

    /// Distribution of requests over auctions/SKUs: `uniform`, `zipf:S`
    /// (key i has weight 1/(i+1)^S; S around 1 makes a few keys hot) or
    /// `per-conn` (connection c always uses key c mod N).
    #[arg(long, env = "GAVEL_BENCH_SKEW", default_value = "uniform")]
    pub skew: Skew,

    /// How bid amounts are chosen: `climb` (rising, most bids can win) or
    /// `chase` (one step above the last price seen in a reply; stale bids
    /// lose).
    #[arg(long, env = "GAVEL_BENCH_BIDDING", value_enum, default_value_t = Bidding::Climb)]
    pub bidding: Bidding,

    /// Send HELLO with this token first on every connection and wait for WELCOME.
    #[arg(long, env = "GAVEL_BENCH_AUTH_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub auth_token: Option<String>,

    /// Speak TLS to the server (a gavel-server started with --tls-cert);
    /// needs --tls-ca.
    #[arg(long, env = "GAVEL_BENCH_TLS")]
    pub tls: bool,

    /// PEM file of the CA certificate(s) to trust for --tls (implies --tls).
    #[arg(long, env = "GAVEL_BENCH_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,

    /// Name to check the server's certificate against (DNS name or IP
    /// address); default: the host part of --addr.
    #[arg(long, env = "GAVEL_BENCH_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// Driver threads; connection i is driven by thread i mod threads.
    #[arg(long, env = "GAVEL_BENCH_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,

    /// Write the summary as JSON to this file.
    #[arg(long, env = "GAVEL_BENCH_JSON")]
    pub json: Option<PathBuf>,

    /// Write the HDR latency percentile distribution (microseconds) to this file.
    #[arg(long, env = "GAVEL_BENCH_HIST")]
    pub hist: Option<PathBuf>,

    /// Write a self-contained HTML report to this file: the latency
    /// percentile spectrum, replies per second, outcomes and errors, and the
    /// run's configuration (inline SVG, no network access needed to view it).
    #[arg(long, env = "GAVEL_BENCH_REPORT", value_name = "HTML")]
    pub report: Option<PathBuf>,

    /// With --report: overlay another run, read from the file its `--json`
    /// wrote (before/after, or Gavel vs Redis). Read before the run starts.
    #[arg(
        long,
        env = "GAVEL_BENCH_COMPARE",
        value_name = "JSON",
        requires = "report"
    )]
    pub compare: Option<PathBuf>,

    /// After the run, read every auction and sale back and check it against the
    /// acknowledged outcomes; exit 2 on any mismatch.
    #[arg(long, env = "GAVEL_BENCH_VERIFY")]
    pub verify: bool,

    /// Testing aid: perturb the expectation so --verify must report a mismatch.
    #[arg(long, hide = true, requires = "verify")]
    pub verify_inject_error: bool,

    /// Testing aid: every Nth request of a connection carries a zero
    /// idempotency key, which the server must reject with ERROR MALFORMED.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub malformed_every: Option<u64>,

    /// First auction id and SKU id of this run (ids are id_base..id_base+N).
    /// Default: derived from the clock, so repeated runs against one server do
    /// not collide.
    #[arg(long, env = "GAVEL_BENCH_ID_BASE")]
    pub id_base: Option<u64>,

    /// Index of this process's first connection. Several client-bench
    /// processes sharing one run's auctions (same --id-base, e.g. one per
    /// node) need disjoint ranges, or their bidder ids and idempotency keys
    /// collide (IDEMPOTENCY_CONFLICT). --verify then only knows this
    /// process's requests, so leave it off there.
    #[arg(long, env = "GAVEL_BENCH_CONN_OFFSET", default_value_t = 0)]
    pub conn_offset: u32,

    /// Skip the setup phase (the auctions/sales at --id-base must already exist).
    #[arg(long, env = "GAVEL_BENCH_NO_SETUP")]
    pub no_setup: bool,

    /// Seed of the per-connection random generators (default: from --id-base).
    #[arg(long, env = "GAVEL_BENCH_SEED")]
    pub seed: Option<u64>,

    /// Give up on a connection that waits this many seconds for a connect,
    /// handshake or reply; its outstanding requests count as lost.
    #[arg(long, env = "GAVEL_BENCH_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,

    /// Never draw the live progress line (it is drawn only when stderr is a terminal).
    #[arg(long, env = "GAVEL_BENCH_NO_PROGRESS")]
    pub no_progress: bool,
}

/// When the load phase stops issuing requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many requests per connection.
    Count(u64),
    /// After this long from the start of the load phase.
    After(Duration),
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Send as soon as a pipeline slot is free (plus the think time).
    Closed { think: Duration },
    /// Each connection sends `per_conn_rate` requests per second on a fixed
    /// schedule; latency counts from those intended send times.
    Open { per_conn_rate: f64 },
}

/// The validated run: what the driver, setup and verify actually use.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: String,
    pub target: TargetKind,
    pub connections: u32,
    pub connect_pacing: Duration,
    pub stop: Stop,
    pub pacing: Pacing,
    pub pipeline: u32,
    pub workload: Workload,
    pub auctions: u32,
    pub skus: u32,
    pub stock: u64,
    pub skew: Skew,
    pub bidding: Bidding,
    pub auth_token: Option<Vec<u8>>,
    /// `--tls`: every connection (load, setup, verify) speaks TLS.
    pub tls: Option<TlsPlan>,
    /// `--target redis`: the Redis behind `addr`.
    pub redis: Option<RedisPlan>,
    pub threads: u32,
    pub id_base: u64,
    pub conn_offset: u32,
    pub seed: u64,
    pub malformed_every: Option<u64>,
    pub timeout: Duration,
}

/// Run length when neither --bids-per-conn nor --duration is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

impl BenchConfig {
    /// Checks the combination of flags and resolves defaults.
    pub fn plan(&self) -> Result<Plan, String> {
        let stop = match (self.bids_per_conn, self.duration) {
            (Some(n), None) => Stop::Count(n),
            (None, Some(d)) => {
                if !d.is_finite() || d <= 0.0 {
                    return Err(format!("--duration must be a positive number, got {d}"));
                }
                Stop::After(Duration::from_secs_f64(d))
            }
            (None, None) => Stop::After(DEFAULT_DURATION),
            (Some(_), Some(_)) => {
                return Err("--bids-per-conn and --duration exclude each other".into())
            }
        };
        let pacing = match self.rate {
            Some(r) => {
                if !r.is_finite() || r <= 0.0 {
                    return Err(format!("--rate must be a positive number, got {r}"));
                }
                Pacing::Open {
                    per_conn_rate: r / f64::from(self.connections),
                }
            }
            None => Pacing::Closed {
                think: Duration::from_millis(self.interval_ms),
            },
        };
        if let Some(token) = &self.auth_token {
            if token.len() > u8::MAX as usize {
                return Err("--auth-token is longer than 255 bytes".into());
            }
        }
        if self.stock == 0 && self.workload.uses_sales() {
            return Err("--stock must be at least 1".into());
        }
        let tls = match (&self.tls_ca, self.tls) {
            (Some(ca), _) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read --tls-ca {}: {e}", ca.display()))?;
                let name = match &self.tls_server_name {
                    Some(n) => n.clone(),
                    None => host_of(&self.addr),
                };
                Some(TlsPlan::new(&pem, &name).map_err(|e| format!("{}: {e}", ca.display()))?)
            }
            (None, true) => {
                return Err(
                    "--tls needs --tls-ca PEM (the CA that signed the server's certificate)".into(),
                )
            }
            (None, false) => None,
        };
        let redis = match (self.target, &self.redis_url) {
            (TargetKind::Redis, url) => {
                if tls.is_some() {
                    return Err("--target redis does not speak TLS".into());
                }
                if self.auth_token.is_some() {
                    return Err(
                        "--target redis takes its password from --redis-url redis://:PASSWORD@host:port, not --auth-token".into(),
                    );
                }
                if self.malformed_every.is_some() {
                    return Err("--malformed-every is for --target gavel".into());
                }
                Some(RedisPlan::parse(
                    url.as_deref().unwrap_or("redis://127.0.0.1:6379"),
                )?)
            }
            (TargetKind::Gavel, Some(_)) => return Err("--redis-url needs --target redis".into()),
            (TargetKind::Gavel, None) => None,
        };
        let id_base = self.id_base.unwrap_or_else(default_id_base);
        let max_keys = u64::from(self.auctions.max(self.skus));
        if id_base.checked_add(max_keys).is_none() {
            return Err("--id-base is too large for the number of auctions/skus".into());
        }
        if u64::from(self.conn_offset) + u64::from(self.connections) >= u64::from(u32::MAX) {
            return Err("--conn-offset + --connections must stay below 2^32 - 1".into());
        }
        Ok(Plan {
            addr: match &redis {
                Some(r) => r.addr.clone(),
                None => self.addr.clone(),
            },
            target: self.target,
            connections: self.connections,
            connect_pacing: Duration::from_millis(self.connect_pacing_ms),
            stop,
            pacing,
            pipeline: self.pipeline,
            workload: self.workload,
            auctions: self.auctions,
            skus: self.skus,
            stock: self.stock,
            skew: self.skew,
            bidding: self.bidding,
            // The session credential: HELLO's token, or Redis' AUTH password.
            auth_token: match &redis {
                Some(r) => r.password.clone().map(String::into_bytes),
                None => self.auth_token.clone().map(String::into_bytes),
            },
            tls,
            redis,
            threads: self.threads.min(self.connections),
            id_base,
            conn_offset: self.conn_offset,
            seed: self.seed.unwrap_or(id_base ^ 0x9e37_79b9_7f4a_7c15),
            malformed_every: self.malformed_every,
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Milliseconds since the epoch times one million: runs started at least a
/// millisecond apart get disjoint id ranges for up to a million auctions/SKUs.
pub fn default_id_base() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    ms.saturating_mul(1_000_000)
}

impl Plan {
    /// Auction id of auction index `i`.
    pub fn auction_id(&self, i: u32) -> u64 {
        self.id_base + u64::from(i)
    }

    /// SKU id of sale index `i`.
    pub fn sku_id(&self, i: u32) -> u64 {
        self.id_base + u64::from(i)
    }

    /// Total requests the run will issue, when known in advance.
    pub fn planned_requests(&self) -> Option<u64> {
        match self.stop {
            Stop::Count(n) => Some(n.saturating_mul(u64::from(self.connections))),
            Stop::After(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        BenchConfig::command().debug_assert();
    }

    #[test]
    fn skew_parses() {
        assert_eq!("uniform".parse::<Skew>().unwrap(), Skew::Uniform);
        assert_eq!("zipf:1.2".parse::<Skew>().unwrap(), Skew::Zipf(1.2));
        assert!("zipf:".parse::<Skew>().is_err());
        assert!("zipf:-1".parse::<Skew>().is_err());
        assert!("pareto".parse::<Skew>().is_err());
        assert_eq!(Skew::Zipf(0.5).to_string(), "zipf:0.5");
        assert_eq!("per-conn".parse::<Skew>().unwrap(), Skew::PerConn);
        assert_eq!(Skew::PerConn.to_string(), "per-conn");
    }

    #[test]
    fn plan_defaults_and_conflicts() {
        let c = BenchConfig::try_parse_from(["client-bench"]).unwrap();
        let p = c.plan().unwrap();
        assert_eq!(p.stop, Stop::After(DEFAULT_DURATION));
        assert_eq!(p.connections, 100);
        assert_eq!(p.pipeline, 1);
        assert!(matches!(p.pacing, Pacing::Closed { .. }));

        let c = BenchConfig::try_parse_from([
            "client-bench",
            "--connections",
            "4",
            "--bids-per-conn",
            "10",
            "--rate",
            "100",
            "--id-base",
            "5",
        ])
        .unwrap();
        let p = c.plan().unwrap();
        assert_eq!(p.stop, Stop::Count(10));
        assert_eq!(
            p.pacing,
            Pacing::Open {
                per_conn_rate: 25.0
            }
        );
        assert_eq!(p.auction_id(2), 7);
        assert_eq!(p.planned_requests(), Some(40));

        assert!(BenchConfig::try_parse_from([
            "client-bench",
            "--bids-per-conn",
            "1",
            "--duration",
            "1"
        ])
        .is_err());
        assert!(
            BenchConfig::try_parse_from(["client-bench", "--rate", "1", "--interval-ms", "5"])
                .is_err()
        );
        assert!(BenchConfig::try_parse_from(["client-bench", "--pipeline", "0"]).is_err());
        let c = BenchConfig::try_parse_from(["client-bench", "--duration=-1"]).unwrap();
        assert!(c.plan().is_err());
    }

    #[test]
    fn redis_urls() {
        let r = RedisPlan::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!((r.addr.as_str(), r.password), ("127.0.0.1:6380", None));
        let r = RedisPlan::parse("redis://:s3cret@localhost/0").unwrap();
        assert_eq!(
            (r.addr.as_str(), r.password.as_deref()),
            ("localhost:6379", Some("s3cret"))
        );
        assert_eq!(
            RedisPlan::parse("redis://[::1]:7000").unwrap().addr,
            "[::1]:7000"
        );
        assert_eq!(
            RedisPlan::parse("redis://[::1]").unwrap().addr,
            "[::1]:6379"
        );
        assert!(RedisPlan::parse("http://x").is_err());
        assert!(RedisPlan::parse("redis://x/3").is_err());
        assert!(RedisPlan::parse("redis://user:pw@x").is_err());

        let c = BenchConfig::try_parse_from([
            "client-bench",
            "--target",
            "redis",
            "--redis-url",
            "redis://:pw@10.0.0.1:7001",
        ])
        .unwrap();
        let p = c.plan().unwrap();
        assert_eq!(p.addr, "10.0.0.1:7001");
        assert_eq!(p.auth_token.as_deref(), Some(&b"pw"[..]));
        let j = serde_json::to_string(&c).unwrap();
        assert!(!j.contains("pw@"), "{j}");
        let c = BenchConfig::try_parse_from(["client-bench", "--redis-url", "redis://x"]).unwrap();
        assert!(c.plan().is_err());
    }

    #[test]
    fn auth_token_is_not_echoed() {
        let c = BenchConfig::try_parse_from(["client-bench", "--auth-token", "sekrit"]).unwrap();
        let j = serde_json::to_string(&c).unwrap();
        assert!(!j.contains("sekrit"), "{j}");
    }
}
