//! The processes the fault harness owns: gavel-server (started, killed,
//! paused, restarted), and the throwaway PostgreSQL and Redis of
//! `gavel-testkit`, stopped and started as outages.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gavel_testkit::pg::Postgres;
use gavel_testkit::redis::RedisServer;

/// The message of a panic caught from the testkit.
fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs a testkit call that panics on failure, as a `Result`.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_text)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// gavel-server, started and restarted on the same address and store.
pub struct ServerProc {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    paused: bool,
    /// Times it was started.
    pub starts: u32,
}

impl ServerProc {
    pub fn new(bin: PathBuf, addr: SocketAddr, args: Vec<String>, log: PathBuf) -> ServerProc {
        ServerProc {
            bin,
            args,
            log,
            addr,
            child: None,
            paused: false,
            starts: 0,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts it and waits (up to `timeout`) for its `listening on` line.
    pub fn start(&mut self, timeout: Duration) -> Result<(), String> {
        debug_assert!(self.child.is_none());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let mut child = Command::new(&self.bin)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.starts += 1;
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(first) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("listening on ") => {
                    self.child = Some(child);
                    self.paused = false;
                    return Ok(());
                }
                Ok(line) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("unexpected first line from gavel-server: {line:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(format!(
                        "gavel-server exited ({status}) before listening; its log ends:\n{}",
                        self.log_tail(20)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "gavel-server not listening after {timeout:?}; its log ends:\n{}",
                        self.log_tail(20)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Whether it runs; reaps it if it exited, returning how.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), libc::SIGSTOP);
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), libc::SIGCONT);
        }
        self.paused = false;
    }

    /// SIGTERM (after SIGCONT if paused) and wait up to `wait` for the
    /// exit; past it, SIGKILL. `Ok(status)` if it exited by itself.
    pub fn terminate(&mut self, wait: Duration) -> Result<ExitStatus, String> {
        let Some(mut c) = self.child.take() else {
            return Err("not running".into());
        };
        if self.paused {
            signal(c.id(), libc::SIGCONT);
            self.paused = false;
        }
        signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("did not exit within {wait:?} of SIGTERM; killed"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let Ok(mut f) = File::open(&self.log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The throwaway PostgreSQL, stopped with `pg_ctl` (as the `postgres` user
/// when root) for an outage.
pub struct Pg {
    pg: Postgres,
    pub down: bool,
}

impl Pg {
    pub fn start() -> Result<Pg, String> {
        if gavel_testkit::pg::external_url().is_some() {
            return Err(format!(
                "the fault harness stops and starts PostgreSQL, so it starts its own: unset {}",
                gavel_testkit::pg::URL_VAR
            ));
        }
        Ok(Pg {
            pg: guarded(Postgres::start)?,
            down: false,
        })
    }

    pub fn url(&self) -> String {
        self.pg.url()
    }

    /// `pg_ctl stop -m fast` (sessions ended, checkpoint) or `-m immediate`
    /// (no checkpoint: crash recovery at the next start).
    pub fn stop(&mut self, immediate: bool) -> Result<(), String> {
        let bin = gavel_testkit::pg::bin_dir()?;
        let data = self
            .pg
            .dir()
            .ok_or("no data directory (external server)")?
            .join("data");
        let mode = if immediate { "immediate" } else { "fast" };
        let pg_ctl = bin.join("pg_ctl");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let out = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", pg_ctl.display()))?;
        // Reap the postmaster the testkit spawned (it has exited now; if
        // pg_ctl failed, this stops it the testkit's way).
        let reaped = guarded(|| self.pg.stop());
        self.down = true;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl -m {mode} stop failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        reaped
    }

    pub fn start_again(&mut self) -> Result<(), String> {
        guarded(|| self.pg.start_again())?;
        self.down = false;
        Ok(())
    }
}

/// The throwaway Redis, with `appendonly yes` / `appendfsync always`, so
/// what it acknowledged survives SIGKILL.
pub struct Redis {
    redis: RedisServer,
    pub down: bool,
}

impl Redis {
    pub fn start() -> Result<Redis, String> {
        Ok(Redis {
            redis: guarded(|| {
                RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
            })?,
            down: false,
        })
    }

    pub fn url(&self) -> String {
        self.redis.url()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.redis.stop();
        self.down = true;
    }

    /// Started again on the same port; it reloads its append-only file.
    pub fn restart(&mut self) -> Result<(), String> {
        guarded(|| self.redis.restart())?;
        self.down = false;
        Ok(())
    }
}
