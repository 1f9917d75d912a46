//! Exponential backoff with jitter, for every reconnect and retry loop (the
//! store writer's breaker, the Redis engine, the Redis update listener).

use std::time::{Duration, Instant};

/// 50 ms doubling to 2 s, each delay scaled by a random 0.75–1.25 so that
/// many shards retrying one server do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(50);
    pub const MAX: Duration = Duration::from_secs(2);

    pub fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The delay before the next attempt; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        let d = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    /// When the next attempt is due, from now.
    pub fn next_attempt(&mut self) -> Instant {
        Instant::now() + self.next_delay()
    }

    /// Success: start again from the minimum.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let mut base = Backoff::MIN;
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25),
                "{d:?} vs {base:?}"
            );
            base = (base * 2).min(Backoff::MAX);
        }
        assert_eq!(base, Backoff::MAX);
        b.reset();
        assert!(b.next_delay() <= Backoff::MIN.mul_f64(1.25));
    }
}
