//! Log lines that a client can cause by the thousand (a refused connection,
//! a bad HELLO, an idle close, a frame too large), rate-limited: per kind,
//! the first occurrence in an interval is logged as it happens and the
//! others are counted, then summed up in one line when the interval ends.
//! So a flood costs two lines per kind per interval, not one per event.
//! One for the server, shared by the event loops behind a mutex: taken only
//! for such events (a flood of them is what it exists for) and once a
//! second per loop for the summaries, never per request.

use std::sync::Mutex;
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
    windows: Mutex<[Window; KINDS]>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            windows: Mutex::new([Window::default(); KINDS]),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, [Window; KINDS]> {
        // A panic elsewhere while holding it leaves counts, not broken state.
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True: log this event now. False: it is counted for the summary.
    pub fn allow(&self, kind: Noisy, now: Instant) -> bool {
        let mut windows = self.windows();
        self.summarize_in(&mut windows, now);
        let w = &mut windows[kind as usize];
        if w.since.is_none() {
            w.since = Some(now);
            return true;
        }
        w.quiet += 1;
        false
    }

    /// Logs one summary line per kind whose interval is over; call often
    /// (each event loop's sweep does, every second).
    pub fn summarize(&self, now: Instant) {
        self.summarize_in(&mut self.windows(), now);
    }

    fn summarize_in(&self, windows: &mut [Window; KINDS], now: Instant) {
        for (i, w) in windows.iter_mut().enumerate() {
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
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(l.allow(Noisy::BadHello, t0));
        for i in 0..1000 {
            assert!(!l.allow(Noisy::BadHello, t0 + Duration::from_millis(i)));
        }
        assert!(l.allow(Noisy::Idle, t0), "kinds are apart");
        assert_eq!(l.windows()[Noisy::BadHello as usize].quiet, 1000);
        l.summarize(t0 + Duration::from_secs(10));
        assert_eq!(l.windows()[Noisy::BadHello as usize].quiet, 0);
        assert!(l.allow(Noisy::BadHello, t0 + Duration::from_secs(11)));
    }
}
