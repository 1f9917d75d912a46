//! Test harness: starts the real `gavel-server` binary on a free port, runs
//! this crate's binaries against it, and stops the server when dropped.
//!
//! The server is a sibling binary of this workspace: `cargo test --workspace`
//! builds it; with `cargo test -p client-bench` build it first
//! (`cargo build -p gavel-server`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// `target/<profile>/gavel-server`, found next to this test's executable
/// (`target/<profile>/deps/<test>`).
pub fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = dir.join(format!("gavel-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p gavel-server` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_client-bench")
}

pub fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gavel-cli")
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `gavel-server --listen 127.0.0.1:0 --store memory` plus `args`
    /// and waits for its `listening on ADDR` line.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(server_bin())
            .args(["--listen", "127.0.0.1:0", "--store", "memory"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gavel-server");
        let stderr = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read server stdout");
        let addr = match line.trim().strip_prefix("listening on ") {
            Some(a) => a.parse().expect("address after `listening on`"),
            None => {
                let _ = child.kill();
                panic!("unexpected first line from gavel-server: {line:?}");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines().map_while(Result::ok) {});
        Server { child, addr }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary to completion, echoing its output on failure diagnostics.
pub fn run(bin: &str, args: &[&str]) -> Output {
    let out = Command::new(bin)
        .args(args)
        .env_remove("GAVEL_BENCH_AUTH_TOKEN")
        .env_remove("GAVEL_CLI_AUTH_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    eprintln!(
        "$ {bin} {}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh path in the system temp dir, unique to this process and `name`.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("client-bench-test-{}-{name}", std::process::id()))
}

/// An address nothing listens on: bind a free port, then release it.
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}
