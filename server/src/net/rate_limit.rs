//! Token buckets for `--rate-per-conn` and `--rate-per-bidder`.
//!
//! A bucket is two integers; taking a token is a subtraction after a refill
//! computed from the server's clock (nanoseconds since the event loops'
//! common epoch, read once per read batch), so a check costs a few
//! arithmetic instructions and never allocates. A connection's bucket is a
//! field of the connection, owned by its event loop: no lock.
//!
//! Per-bidder buckets live in bounded maps keyed by bidder (or buyer) id,
//! shared by every event loop ([`SharedBuckets`]): a bidder whose
//! connections land on different loops draws from one bucket. The maps are
//! striped, a mutex each, by the id's hash, so loops rarely meet on one lock;
//! the lock is taken only for a BID or BUY with the flag on. A bucket that
//! has been idle long enough to refill to its burst behaves exactly like a
//! missing one, so such buckets are evicted by a periodic sweep without
//! changing any decision; when a stripe is still full, its least recently
//! used half is dropped instead (which can only make the limit more lenient
//! for those ids, never stricter).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

const NANOS: u64 = 1_000_000_000;

/// `RATE[/BURST]`: RATE requests per second, bursts of up to BURST (default:
/// RATE, one second's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub rate: u64,
    pub burst: u64,
}

impl FromStr for RateSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err =
            || format!("invalid rate {s:?}: expected RATE or RATE/BURST, e.g. 1000 or 1000/2000");
        let (rate, burst) = match s.trim().split_once('/') {
            Some((r, b)) => (r.trim(), Some(b.trim())),
            None => (s.trim(), None),
        };
        let rate: u64 = rate.parse().map_err(|_| err())?;
        let burst: u64 = match burst {
            Some(b) => b.parse().map_err(|_| err())?,
            None => rate,
        };
        if rate == 0 || burst == 0 {
            return Err(format!("{}: RATE and BURST must be at least 1", err()));
        }
        if rate > 1_000_000_000 || burst > 1_000_000_000 {
            return Err(format!("{}: RATE and BURST are at most 1000000000", err()));
        }
        Ok(RateSpec { rate, burst })
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.rate, self.burst)
    }
}

/// A rate in the units a bucket computes with.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Tokens per second.
    rate: u64,
    /// Capacity in nano-tokens (`burst * 1e9`).
    cap: u64,
    /// Time to refill from empty to full, in ns: longer idle changes nothing.
    fill_ns: u64,
}

impl Limit {
    pub fn new(spec: RateSpec) -> Limit {
        let cap = spec.burst * NANOS;
        Limit {
            rate: spec.rate,
            cap,
            fill_ns: cap.div_ceil(spec.rate),
        }
    }
}

/// One token bucket. Tokens are kept in nano-tokens so refills by the
/// nanosecond need no division.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    tokens: u64,
    last_ns: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: &Limit, now_ns: u64) -> Bucket {
        Bucket {
            tokens: limit.cap,
            last_ns: now_ns,
        }
    }

    /// Takes one token if there is one.
    #[inline]
    pub fn take(&mut self, limit: &Limit, now_ns: u64) -> bool {
        if now_ns > self.last_ns {
            let elapsed = (now_ns - self.last_ns).min(limit.fill_ns);
            // elapsed <= fill_ns, so elapsed * rate <= cap + rate: no overflow.
            self.tokens = (self.tokens + elapsed * limit.rate).min(limit.cap);
            self.last_ns = now_ns;
        }
        if self.tokens >= NANOS {
            self.tokens -= NANOS;
            true
        } else {
            false
        }
    }

    /// Full again by `now_ns`, i.e. indistinguishable from a new bucket.
    fn is_idle(&self, limit: &Limit, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_ns) >= limit.fill_ns
    }
}

/// Per-bidder buckets, at most `max_keys` of them; one stripe of
/// [`SharedBuckets`].
pub struct KeyedBuckets {
    limit: Limit,
    map: HashMap<u64, Bucket, ahash::RandomState>,
    max_keys: usize,
}

impl KeyedBuckets {
    pub fn new(spec: RateSpec, max_keys: usize) -> KeyedBuckets {
        let max_keys = max_keys.max(1);
        KeyedBuckets {
            limit: Limit::new(spec),
            map: HashMap::with_capacity_and_hasher(max_keys.min(4096), ahash::RandomState::new()),
            max_keys,
        }
    }

    /// Takes one token from `key`'s bucket.
    #[inline]
    pub fn take(&mut self, key: u64, now_ns: u64) -> bool {
        if let Some(b) = self.map.get_mut(&key) {
            return b.take(&self.limit, now_ns);
        }
        if self.map.len() >= self.max_keys {
            self.make_room(now_ns);
        }
        let mut b = Bucket::full(&self.limit, now_ns);
        let ok = b.take(&self.limit, now_ns);
        self.map.insert(key, b);
        ok
    }

    /// Drops buckets that have refilled completely (nothing is lost: a new
    /// bucket would be identical). Called about once a second.
    pub fn sweep(&mut self, now_ns: u64) {
        let limit = self.limit;
        self.map.retain(|_, b| !b.is_idle(&limit, now_ns));
    }

    /// The map is full: drop idle buckets, and if that is not enough, the
    /// least recently used half.
    fn make_room(&mut self, now_ns: u64) {
        self.sweep(now_ns);
        if self.map.len() < self.max_keys {
            return;
        }
        let mut lasts: Vec<u64> = self.map.values().map(|b| b.last_ns).collect();
        let mid = lasts.len() / 2;
        let (_, &mut median, _) = lasts.select_nth_unstable(mid);
        self.map.retain(|_, b| b.last_ns > median);
        tracing::warn!(
            max_keys = self.max_keys,
            kept = self.map.len(),
            "per-bidder rate limit table full; dropped the least recently used half"
        );
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Stripes of [`SharedBuckets`]: a power of two, a few times the event
/// loops a box would run, so two loops seldom want the same lock at once.
const STRIPES: usize = 32;

/// The per-bidder buckets of the whole server, shared by the event loops:
/// [`STRIPES`] maps behind a mutex each, chosen by the id's hash.
pub struct SharedBuckets {
    stripes: Box<[Mutex<KeyedBuckets>]>,
}

impl SharedBuckets {
    /// `max_keys` for the server, split evenly over the stripes (ids are
    /// spread by hash).
    pub fn new(spec: RateSpec, max_keys: usize) -> SharedBuckets {
        let per_stripe = max_keys.div_ceil(STRIPES).max(1);
        SharedBuckets {
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(KeyedBuckets::new(spec, per_stripe)))
                .collect(),
        }
    }

    fn stripe(&self, i: usize) -> MutexGuard<'_, KeyedBuckets> {
        // A panic while holding it leaves buckets, not broken state.
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one token from `key`'s bucket; `now_ns` on the server's clock.
    #[inline]
    pub fn take(&self, key: u64, now_ns: u64) -> bool {
        // Fibonacci hashing: the top bits of the product, so sequential ids
        // spread over the stripes (the map inside hashes on its own).
        let i =
            (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - STRIPES.trailing_zeros())) as usize;
        self.stripe(i).take(key, now_ns)
    }

    /// Sweeps idle buckets from every stripe, one lock at a time. Called
    /// about once a second by one event loop.
    pub fn sweep(&self, now_ns: u64) {
        for i in 0..self.stripes.len() {
            self.stripe(i).sweep(now_ns);
        }
    }

    pub fn len(&self) -> usize {
        (0..self.stripes.len()).map(|i| self.stripe(i).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn parses_rate_and_burst() {
        assert_eq!(
            "1000".parse::<RateSpec>().unwrap(),
            RateSpec {
                rate: 1000,
                burst: 1000
            }
        );
        assert_eq!(
            "10/25".parse::<RateSpec>().unwrap(),
            RateSpec {
                rate: 10,
                burst: 25
            }
        );
        assert!("0".parse::<RateSpec>().is_err());
        assert!("10/0".parse::<RateSpec>().is_err());
        assert!("ten".parse::<RateSpec>().is_err());
        assert!("10/".parse::<RateSpec>().is_err());
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let limit = Limit::new(RateSpec { rate: 10, burst: 5 });
        let mut b = Bucket::full(&limit, 0);
        for _ in 0..5 {
            assert!(b.take(&limit, 0));
        }
        assert!(!b.take(&limit, 0));
        // 10/s: one token per 100 ms.
        assert!(!b.take(&limit, 99 * MS));
        assert!(b.take(&limit, 100 * MS));
        assert!(!b.take(&limit, 150 * MS));
        // A long pause refills to the burst, not beyond.
        let t = 3600 * 1000 * MS;
        for _ in 0..5 {
            assert!(b.take(&limit, t));
        }
        assert!(!b.take(&limit, t));
    }

    #[test]
    fn huge_rates_do_not_overflow() {
        let limit = Limit::new(RateSpec {
            rate: 1_000_000_000,
            burst: 1_000_000_000,
        });
        let mut b = Bucket::full(&limit, 0);
        assert!(b.take(&limit, u64::MAX / 2));
        assert!(b.take(&limit, u64::MAX));
    }

    #[test]
    fn keyed_buckets_are_independent_and_bounded() {
        let mut k = KeyedBuckets::new(RateSpec { rate: 1, burst: 2 }, 100);
        assert!(k.take(7, 0));
        assert!(k.take(7, 0));
        assert!(!k.take(7, 0));
        assert!(k.take(8, 0));
        // Idle buckets are swept; busy ones stay.
        k.sweep(1500 * MS);
        assert_eq!(k.len(), 2);
        k.sweep(2000 * MS);
        assert!(k.is_empty());
        for key in 0..1000u64 {
            k.take(key, 3000 * MS + key);
            assert!(k.len() <= 100);
        }
        // The most recent key is still tracked: its second and third tokens.
        assert!(k.take(999, 3000 * MS + 999));
        assert!(!k.take(999, 3000 * MS + 999));
    }

    #[test]
    fn shared_buckets_limit_a_bidder_across_threads() {
        // Two threads (two event loops) take from the same bidder at one
        // instant: together they get the burst, not twice it.
        let b = std::sync::Arc::new(SharedBuckets::new(
            RateSpec {
                rate: 1,
                burst: 1000,
            },
            1000,
        ));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.take(42, 5 * MS)).count())
            })
            .collect();
        let got: usize = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(got, 1000);
        assert!(!b.take(42, 5 * MS));
        // Other ids have their own buckets, and idle ones are swept.
        assert!(b.take(43, 5 * MS));
        assert_eq!(b.len(), 2);
        b.sweep(5 * MS + 1000 * 1000 * MS);
        assert!(b.is_empty());
    }

    #[test]
    fn shared_buckets_bound_the_keys_over_all_stripes() {
        let b = SharedBuckets::new(RateSpec { rate: 1, burst: 2 }, 640);
        for key in 0..100_000u64 {
            b.take(key, key);
        }
        assert!(b.len() <= 640, "{}", b.len());
    }
}
