//! Backoff with jitter, and the retry policy for requests.
//!
//! [`Backoff`] spaces both reconnect attempts and request retries: the n-th
//! delay is drawn uniformly from `[d/2, d]` where `d = min(max, initial ·
//! multiplier^n)` ("equal jitter"), so many clients that lost the same server
//! at the same moment do not come back in lock step, and no delay is zero.
//!
//! [`RetryPolicy`] decides which failed requests are sent again. What it
//! resends is always the *same* request: a `BID` keeps its `bid_id`, a `BUY`
//! its `order_id` (PROTOCOL.md §6.3, §7), so a request that did execute the
//! first time is answered with its stored outcome and the `REPLAYED` flag, and
//! one that did not is evaluated now. Either way it executes at most once.
//!
//! (One server setting bends this: in cross-node mode with `--outbid-filter`
//! a retry of a bid that was accepted and since outbid may get `OUTBID`
//! instead of its replayed `OK`, PROTOCOL.md §11.4. Read `GET_AUCTION` there.)

use std::time::Duration;

use gavel_protocol::Request;
use rand::Rng;

/// Exponential backoff with "equal jitter".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay (before jitter).
    pub initial: Duration,
    /// No delay exceeds this.
    pub max: Duration,
    /// Growth per attempt (2.0 doubles).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The ceiling of the delay before attempt `n + 1` (n = 0 for the first
    /// retry), without jitter.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(n.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The delay before attempt `n + 1`: uniform in `[ceiling/2, ceiling]`.
    pub fn delay(&self, n: u32) -> Duration {
        let d = self.ceiling(n);
        if d.is_zero() {
            return d;
        }
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=d - half)
    }
}

/// Which failed requests are sent again, how often and how far apart.
///
/// A request is retried when it failed with a retryable error
/// ([`Error::is_retryable`](crate::Error::is_retryable): `BUSY`,
/// `RATE_LIMITED`, `UNAVAILABLE`, `IN_DOUBT`, `SHUTTING_DOWN`, an unknown
/// `ERROR` code, a dropped connection, a reply timeout, no connection), while
/// fewer than `max_attempts` attempts were made and `max_elapsed` has not
/// passed. Keyed requests (`BID`, `BUY`) are always eligible; the others only
/// with `unkeyed` (PROTOCOL.md §6.1 makes every request type safe to retry:
/// `OPEN_*` replays, a repeated `CLOSE_AUCTION` answers `CLOSED` with the
/// winner, reads and `SUBSCRIBE` have no further effect).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// No new attempt starts after this much time since the first.
    pub max_elapsed: Duration,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Also retry requests without an idempotency key.
    pub unkeyed: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_elapsed: Duration::from_secs(30),
            backoff: Backoff::default(),
            unkeyed: true,
        }
    }
}

impl RetryPolicy {
    /// Never retry: every failure is returned to the caller as it happened.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Whether `req` may be sent again under this policy.
    pub fn covers(&self, req: &Request) -> bool {
        is_keyed(req) || self.unkeyed
    }
}

/// `BID` and `BUY` carry an idempotency key.
pub fn is_keyed(req: &Request) -> bool {
    matches!(req, Request::Bid(_) | Request::Buy(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(1000), Duration::from_secs(1));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = b.delay(2);
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter spreads the delays");
    }

    #[test]
    fn keyed_requests_are_always_covered() {
        let bid = Request::Bid(gavel_protocol::BidRequest {
            auction_id: 1,
            bidder_id: 1,
            amount: 1,
            bid_id: 1,
        });
        let get = Request::GetAuction { auction_id: 1 };
        let p = RetryPolicy {
            unkeyed: false,
            ..RetryPolicy::default()
        };
        assert!(p.covers(&bid));
        assert!(!p.covers(&get));
        assert!(RetryPolicy::default().covers(&get));
    }
}
