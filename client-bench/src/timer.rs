//! Precise wakeups for the driver's poll loop.
//!
//! `epoll_wait` takes its timeout in whole milliseconds (mio rounds up), which
//! would delay every open-loop send by up to a millisecond and show up as
//! latency the server did not cause. On Linux a `timerfd` registered with the
//! poll wakes it at microsecond precision instead; elsewhere the poll timeout
//! alone is used.

use std::io;
use std::time::Duration;

use mio::{Registry, Token};

/// Token reserved for the timer in every driver poll.
pub const TIMER_TOKEN: Token = Token(usize::MAX);

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use mio::unix::SourceFd;
    use mio::Interest;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub struct Wakeup {
        fd: OwnedFd,
    }

    /// Lowers the calling thread's timer slack (default 50 µs) to 1 µs.
    pub fn tune_thread() {
        // SAFETY: PR_SET_TIMERSLACK only affects the calling thread.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
    }

    impl Wakeup {
        pub fn new(registry: &Registry) -> io::Result<Option<Wakeup>> {
            // SAFETY: plain syscall; the returned descriptor is owned below.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Ok(None);
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            registry.register(
                &mut SourceFd(&fd.as_raw_fd()),
                TIMER_TOKEN,
                Interest::READABLE,
            )?;
            Ok(Some(Wakeup { fd }))
        }

        /// Fires once, `after` from now (at least one microsecond).
        pub fn arm(&mut self, after: Duration) {
            let after = after.max(Duration::from_micros(1));
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: after.as_secs() as libc::time_t,
                    tv_nsec: after.subsec_nanos() as libc::c_long,
                },
            };
            // SAFETY: valid descriptor and pointers for the call's duration.
            unsafe {
                libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
            }
        }

        /// Consumes the expiration so the next one is announced again.
        pub fn clear(&mut self) {
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a local buffer.
            unsafe {
                libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub struct Wakeup;

    pub fn tune_thread() {}

    impl Wakeup {
        pub fn new(_: &Registry) -> io::Result<Option<Wakeup>> {
            Ok(None)
        }
        pub fn arm(&mut self, _: Duration) {}
        pub fn clear(&mut self) {}
    }
}

pub use imp::{tune_thread, Wakeup};
