//! Gavel's load generator (`client-bench`) and command-line client (`gavel-cli`).
//!
//! The load generator is split by concept:
//!
//! * [`config`]: the command line (every flag also a `GAVEL_BENCH_*` variable)
//!   and the run [`config::Plan`] derived from it;
//! * [`workload`]: what each connection asks for (bids, buys, ids, amounts, skew);
//! * [`target`]: the seam between the driver and a wire protocol — how an
//!   operation is encoded and how replies are parsed ([`target::GavelTarget`]);
//! * [`target_redis`]: `--target redis`, the same load as `EVALSHA` of
//!   Gavel's Lua scripts straight to Redis (the one-CAS-per-request baseline);
//! * [`inflight`]: per-connection table of requests awaiting their reply;
//! * [`driver`]: the mio event loops that connect, pipeline, pace and drain;
//! * [`stats`]: honest accounting (attempted, answered, lost, latencies) and the
//!   expectations `--verify` checks;
//! * [`setup`]: opening the auctions and sales a run uses;
//! * [`verify`]: reading the server's state back and comparing;
//! * [`report`]: the text summary, `--json` and `--hist` outputs;
//! * [`html_report`]: `--report`, the self-contained HTML page of a run
//!   (latency spectrum, replies per second, outcomes, configuration), with
//!   `--compare` overlaying another run's `--json`;
//! * [`progress`]: the live progress line on a terminal;
//! * [`timer`]: sub-millisecond wakeups of the poll loop;
//! * [`transport`]: the driver's non-blocking stream, plain TCP or TLS;
//! * [`cli`]: `gavel-cli`, one request per invocation;
//! * [`chaos`]: `client-bench chaos`, the fault harness (nemesis, history,
//!   checker) that `scripts/chaos.sh` runs.

pub mod chaos;
pub mod cli;
pub mod config;
pub mod driver;
pub mod html_report;
pub mod inflight;
pub mod progress;
pub mod report;
pub mod setup;
pub mod stats;
pub mod target;
pub mod target_redis;
pub mod timer;
pub mod transport;
pub mod verify;
pub mod workload;
