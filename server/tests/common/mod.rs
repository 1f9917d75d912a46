//! Test harness: starts the real `gavel-server` binary on a free port and
//! stops it when dropped.

#![allow(dead_code)]

pub mod crash;
pub mod spill;
pub mod spread;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gavel_protocol::Client;

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when started with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
}

impl Server {
    /// Starts the server with `--listen 127.0.0.1:0` plus `args` (and
    /// `--store memory` unless `args` name a store), and waits for its
    /// `listening on ADDR` line.
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gavel-server"));
        cmd.args(["--listen", "127.0.0.1:0"]);
        if !args.contains(&"--store") {
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
        let mut child = cmd.spawn().expect("spawn gavel-server");
        let stderr = child.stderr.take().unwrap();
        let (metrics_tx, metrics_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("metrics on ") {
                    let _ = metrics_tx.send(a.trim().parse::<SocketAddr>().unwrap());
                }
                eprintln!("[server] {line}");
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read server stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from server: {line:?}"))
            .parse()
            .unwrap();
        let metrics_addr = if args.contains(&"--metrics-listen") {
            Some(
                metrics_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("server printed `metrics on ADDR`"),
            )
        } else {
            None
        };
        Server {
            child,
            addr,
            metrics_addr,
        }
    }

    /// `GET path` on the metrics listener: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics_addr.expect("--metrics-listen"))
            .expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp[9..12].parse().unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (code, body)
    }

    pub fn client(&self) -> Client {
        let c = Client::connect(self.addr).expect("connect");
        c.set_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        unsafe { libc_kill(self.child.id() as i32, 9) };
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        self.child.wait().unwrap()
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection that speaks raw bytes, for malformed-input tests.
pub fn raw_frame(t: u8, request_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![t, 0];
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(&request_id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
