//! Async (tokio) client for the Gavel wire protocol v1.
//!
//! `PROTOCOL.md` at the repository root is the wire contract; the typed
//! requests and replies come from [`gavel_protocol`]. This crate adds what a
//! long-running service needs around them:
//!
//! * **one connection, many tasks** ([`Client`], [`conn`]): requests from any
//!   number of tasks are multiplexed by `request_id` over one connection by a
//!   writer task and a reader task; each caller awaits only its own reply, so
//!   a slow request never holds up the ones sent after it;
//! * **timeouts** on connecting and on each request attempt ([`Config`]);
//! * **reconnects** with exponential backoff and jitter ([`Backoff`]);
//! * **retries** ([`RetryPolicy`]) that resend a `BID`/`BUY` with the *same*
//!   `bid_id`/`order_id` after `BUSY`, `RATE_LIMITED`, `UNAVAILABLE`,
//!   `IN_DOUBT`, `SHUTTING_DOWN`, an unknown error code, a timeout or a
//!   dropped connection, and report in [`Outcome::replayed`] whether the
//!   final outcome is a replay of an earlier attempt's;
//! * **push streams** ([`Client::subscribe`] → [`Subscription`], a
//!   `futures_core::Stream` of [`Event`]s) with bounded buffering, renewed
//!   after every reconnect (pushes during the gap are lost; see
//!   [`subscription`]);
//! * an **auth token** (sent in the `HELLO` that opens every connection) and,
//!   with feature `tls`, **TLS** via rustls;
//! * a small [`Pool`] of connections.
//!
//! ```no_run
//! use gavel_client::{Client, Config};
//! use gavel_protocol::BidRequest;
//!
//! # async fn demo() -> Result<(), gavel_client::Error> {
//! let client = Client::connect(Config::new("127.0.0.1:7070")).await?;
//! let outcome = client
//!     .bid(BidRequest { auction_id: 42, bidder_id: 7, amount: 1500, bid_id: 0x1001 })
//!     .await?;
//! println!("{} (replayed: {})", outcome.status().name(), outcome.replayed);
//! # Ok(()) }
//! ```

mod client;
pub mod config;
pub mod conn;
pub mod error;
pub mod pool;
pub mod retry;
pub mod subscription;
#[cfg(feature = "tls")]
mod tls;
mod transport;

pub use client::{Client, Outcome, Reply};
pub use config::Config;
pub use error::Error;
pub use gavel_protocol;
pub use gavel_protocol::client::Welcome;
pub use pool::Pool;
pub use retry::{Backoff, RetryPolicy};
pub use subscription::{Event, Subscription};
