//! Test harness: the real `gavel-server` binary, started on a free port (or a
//! given one, to restart "the same" server) and killed when dropped.
//!
//! The binary is found like this: `$GAVEL_SERVER_BIN` if set; otherwise
//! `gavel-server` in the target directory this test binary lives in. It is
//! built (`cargo build -p gavel-server`, once per test process) when it is
//! missing or older than a source file of the server, the protocol crate or
//! the Redis store, so `cargo test -p gavel-client` alone works and a
//! `cargo test --workspace`, which has just built it, does not build it
//! again. If that build fails (the server's sources are mid-edit, say) but
//! a binary is there, that binary is used.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the server binary (built if needed).
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("GAVEL_SERVER_BIN") {
            return PathBuf::from(p);
        }
        // target/debug/deps/<test> → target/debug
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = dir.join("gavel-server");
        let target_dir = dir.parent().unwrap();
        let profile = dir.file_name().unwrap().to_str().unwrap().to_string();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let built_at = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let stale = match built_at {
            None => true,
            Some(t) => [
                "server/src",
                "protocol/src",
                "redis-store/src",
                "lua",
                "server/Cargo.toml",
            ]
            .iter()
            .any(|d| newer_than(&root.join(d), t)),
        };
        if !stale {
            return bin;
        }
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "gavel-server", "--bin", "gavel-server"])
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        if profile == "release" {
            cmd.arg("--release");
        }
        let built = cmd.status().map(|s| s.success()).unwrap_or(false);
        if !built {
            assert!(
                bin.exists(),
                "`cargo build -p gavel-server` failed and there is no {}",
                bin.display()
            );
            eprintln!("warning: building gavel-server failed; using the existing binary");
        }
        bin
    })
    .clone()
}

/// Whether any file under `path` (or `path` itself) was modified after `t`.
fn newer_than(path: &Path, t: std::time::SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| newer_than(&e.path(), t))
    } else {
        meta.modified().is_ok_and(|m| m > t)
    }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    args: Vec<String>,
}

impl Server {
    /// Starts the server on `127.0.0.1:0` with `args` (plus `--store memory`
    /// unless `args` name a store).
    pub fn start(args: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", args)
    }

    /// Starts the server on `listen` and waits for `listening on ADDR`.
    pub fn start_on(listen: &str, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Server::try_start(listen, &args) {
                Ok(s) => return s,
                // The port of a just-killed server may take a moment.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("server did not start ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("server did not start: {e}"),
            }
        }
    }

    fn try_start(listen: &str, args: &[String]) -> Result<Server, String> {
        let mut cmd = Command::new(server_bin());
        cmd.args(["--listen", listen]);
        if !args.iter().any(|a| a == "--store") {
            cmd.args(["--store", "memory"]);
        }
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("first line {line:?}"));
        };
        let addr = addr.parse().map_err(|e| format!("{e}"))?;
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in stdout.lines() {});
        Ok(Server {
            child,
            addr,
            args: args.to_vec(),
        })
    }

    /// SIGKILL, then a new server with the same arguments on the same port.
    pub fn restart_kill9(&mut self) {
        self.signal(9);
        let _ = self.child.wait();
        self.start_again();
    }

    /// SIGTERM (graceful: in-flight requests answered, later ones
    /// SHUTTING_DOWN), then a new server on the same port.
    pub fn restart_term(&mut self) {
        self.signal(15);
        let _ = self.child.wait();
        self.start_again();
    }

    fn start_again(&mut self) {
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        let next = Server::start_on(&self.addr.to_string(), &args);
        // The old one was reaped above; dropping it is harmless.
        drop(std::mem::replace(self, next));
    }

    pub fn signal(&self, sig: i32) {
        unsafe { kill(self.child.id() as i32, sig) };
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gavel-client-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
