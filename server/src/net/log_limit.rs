//! Log lines that a client can cause by the thousand (a refused connection,
//! a bad HELLO, an idle close, a frame too large), rate-limited: per kind,
//! the first occurrence in an interval is logged as it happens and the
//! others are counted, then summed up in one line when the interval ends.
//! So a flood costs two lines per kind per interval, not one per event.
//! One per event loop; no locks.

use std::time::{Duration, Instant};

/// What happened, by the line it would log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noisy {
    /// A connection refused at accept (`--max-connections`, per address), or
    /// an accept that failed.
    Refused,
    /// A connection closed by `--idle-timeout`.
    Idle,
    /// Auth on: a bad token, a bad version, or any other frame before HELLO.
    BadHello,
    /// A connection closed for a frame over `--max-payload`.
    BadFrame,
}

const KINDS: usize = 4;

impl Noisy {
    fn what(self) -> &'static str {
        match self {
            Noisy::Refused => "connections refused at accept",
            Noisy::Idle => "connections closed by --idle-timeout",
            Noisy::BadHello => "connections closed for a bad or missing HELLO",
            Noisy::BadFrame => "connections closed for a frame over --max-payload",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// When the current interval began (its first event).
    since: Option<Instant>,
    /// Events in it that were not logged.
    quiet: u64,
}

pub struct LogLimiter {
    interval: Duration,
    windows: [Window; KINDS],
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            windows: [Window::default(); KINDS],
        }
    }

    /// True: log this event now. False: it is counted for the summary.
    pub fn allow(&mut self, kind: Noisy, now: Instant) -> bool {
        self.summarize(now);
        let w = &mut self.windows[kind as usize];
        if w.since.is_none() {
            w.since = Some(now);
            return true;
        }
        w.quiet += 1;
        false
    }

    /// Logs one summary line per kind whose interval is over; call often
    /// (the event loop's sweep does, every second).
    pub fn summarize(&mut self, now: Instant) {
        for (i, w) in self.windows.iter_mut().enumerate() {
            let Some(since) = w.since else { continue };
            if now.duration_since(since) < self.interval {
                continue;
            }
            if w.quiet > 0 {
                let kind = [
                    Noisy::Refused,
                    Noisy::Idle,
                    Noisy::BadHello,
                    Noisy::BadFrame,
                ][i];
                tracing::warn!(
                    count = w.quiet,
                    seconds = self.interval.as_secs_f64(),
                    "{} more {} (not logged one by one)",
                    w.quiet,
                    kind.what()
                );
            }
            *w = Window::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_then_a_count_per_interval() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(l.allow(Noisy::BadHello, t0));
        for i in 0..1000 {
            assert!(!l.allow(Noisy::BadHello, t0 + Duration::from_millis(i)));
        }
        assert!(l.allow(Noisy::Idle, t0), "kinds are apart");
        assert_eq!(l.windows[Noisy::BadHello as usize].quiet, 1000);
        l.summarize(t0 + Duration::from_secs(10));
        assert_eq!(l.windows[Noisy::BadHello as usize].quiet, 0);
        assert!(l.allow(Noisy::BadHello, t0 + Duration::from_secs(11)));
    }
}
