//! The Wireshark dissector (`lua/wireshark/gavel.lua`) against real traffic:
//! capture a BID and its RESULT from the real server with `tshark -i lo`,
//! then decode the capture with the dissector and check every field (and
//! that `gavel-cli decode --pcap` reads the same capture).
//!
//! Needs `tshark` (the test fails, never skips, without it: install it with
//! `apt-get install -y tshark`) and the right to capture on `lo` (root, as in
//! CI, or the capture capabilities of Debian's `wireshark` group).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{temp_path, Server};
use gavel_protocol::{BidRequest, Client, OpenAuctionRequest, Request, Response, Status};

/// `tshark` on PATH, or a failure that says how to install it.
fn tshark() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("tshark"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("tshark not found on PATH: install tshark (apt-get install -y tshark)")
        })
}

fn dissector_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lua/wireshark/gavel.lua")
        .canonicalize()
        .expect("lua/wireshark/gavel.lua exists")
}

/// A running `tshark -w` capture; killed if the test fails before `stop`.
struct Capture {
    child: Child,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Capture {
    /// Starts capturing `tcp port PORT` on `lo` into `file` and waits (bounded)
    /// until tshark reports that it is capturing.
    fn start(tshark: &Path, port: u16, file: &Path) -> Capture {
        let mut child = Command::new(tshark)
            .args(["-i", "lo", "-f", &format!("tcp port {port}"), "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tshark");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[tshark] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cap = Capture {
            child,
            stderr: rx,
            log: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match cap
                .stderr
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    // tshark prints `Capturing on 'lo'` before dumpcap has
                    // opened the device; `Capture started.` comes once dumpcap
                    // reports that the device, filter and file are ready.
                    let ready = line.contains("Capture started");
                    cap.log.push(line);
                    if ready {
                        return cap;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = cap.child.wait().expect("wait tshark");
                    panic!(
                        "tshark capture exited ({status}) before capturing; it needs root or \
                         capture rights on lo. stderr:\n{}",
                        cap.log.join("\n")
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "tshark did not report `Capture started` within 60 s; stderr:\n{}",
                    cap.log.join("\n")
                );
            }
        }
    }

    /// SIGINT (tshark then writes out what it has and exits), bounded wait.
    fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(rc, 0, "kill(SIGINT) tshark");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait tshark") {
                // Drain what tshark printed on the way out (packet count).
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
                    self.log.push(line);
                }
                assert!(
                    status.success(),
                    "tshark capture exited with {status}; stderr:\n{}",
                    self.log.join("\n")
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tshark did not stop within 30 s of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One decoded frame: the `-e` fields below, by name.
#[derive(Debug)]
struct Row(Vec<(String, String)>);

impl Row {
    fn get(&self, k: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no field {k} in {self:?}"))
    }
}

const FIELDS: &[&str] = &[
    "frame.number",
    "gavel.type",
    "gavel.flags",
    "gavel.length",
    "gavel.request_id",
    "gavel.bid.auction_id",
    "gavel.bid.bidder_id",
    "gavel.bid.amount",
    "gavel.bid.bid_id",
    "gavel.result.status",
    "gavel.result.value",
    "gavel.result.aux",
    "_ws.col.Info",
];

/// Decodes `file` with the dissector and returns one row per packet that
/// carries Gavel frames; a packet with several frames has comma-separated
/// values (`-E occurrence=a`).
fn decode(tshark: &Path, file: &Path, port: u16) -> Vec<Row> {
    decode_with(tshark, file, port, true)
}

/// `strict`: the capture is complete, so tshark must succeed; otherwise the
/// file is still being written and may end in a partial record.
fn decode_with(tshark: &Path, file: &Path, port: u16, strict: bool) -> Vec<Row> {
    let mut cmd = Command::new(tshark);
    cmd.arg("-r")
        .arg(file)
        .arg("-X")
        .arg(format!("lua_script:{}", dissector_script().display()))
        .args(["-d", &format!("tcp.port=={port},gavel"), "-Y", "gavel"])
        .args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run tshark -r");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !strict {
        return parse_rows(&stdout);
    }
    eprintln!("--- tshark -r stdout\n{stdout}--- tshark -r stderr\n{stderr}");
    assert!(out.status.success(), "tshark -r failed: {stderr}");
    assert!(
        !stderr.contains("Lua"),
        "the dissector reported an error: {stderr}"
    );
    parse_rows(&stdout)
}

fn parse_rows(stdout: &str) -> Vec<Row> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let vals: Vec<&str> = l.split('\t').collect();
            assert_eq!(vals.len(), FIELDS.len(), "unexpected tshark line {l:?}");
            Row(FIELDS
                .iter()
                .zip(vals)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect())
        })
        .collect()
}

#[test]
fn dissector_decodes_a_captured_bid_and_result() {
    let tshark = tshark();
    let server = Server::start(&[]);
    let port = server.addr.port();
    let file = temp_path("dissector.pcapng");
    let _ = std::fs::remove_file(&file);

    let capture = Capture::start(&tshark, port, &file);

    let (auction, bidder, amount, bid_id) = (4242u64, 77u64, 1500u64, 4097u64);
    let mut client = Client::connect(server.addr).expect("connect");
    client
        .set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let open = client
        .call(&Request::OpenAuction(OpenAuctionRequest {
            auction_id: auction,
            reserve: 100,
            min_increment: 10,
            ends_at_ms: 0,
        }))
        .expect("OPEN_AUCTION");
    assert!(matches!(open.body, Response::Result(r) if r.status == Status::Ok));
    let reply = client
        .call(&Request::Bid(BidRequest {
            auction_id: auction,
            bidder_id: bidder,
            amount,
            bid_id,
        }))
        .expect("BID");
    let Response::Result(result) = reply.body else {
        panic!("BID answered {reply:?}");
    };
    assert_eq!(
        (result.status, result.value, result.aux),
        (Status::Ok, amount, bidder)
    );
    let rid = reply.request_id;

    // Three pipelined requests in one write: one TCP segment, three frames.
    let batch = [
        client.send(&Request::GetAuction {
            auction_id: auction,
        }),
        client.send(&Request::Ping(bytes::Bytes::from_static(b"ping"))),
        client.send(&Request::Bid(BidRequest {
            auction_id: auction,
            bidder_id: bidder + 1,
            amount: amount + 5,
            bid_id: bid_id + 1,
        })),
    ];
    client.flush().expect("flush batch");
    for id in batch {
        client.recv_for(id).expect("reply to pipelined request");
    }
    client.shutdown_write().ok();
    drop(client);

    // dumpcap hands packets over in blocks: stopping it right away could
    // lose the last ones. Wait (bounded) until all 10 frames (5 requests, 5
    // replies, in whatever order the server wrote them) are in the file.
    const FRAMES: usize = 10;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = decode_with(&tshark, &file, port, false);
        let frames: usize = rows
            .iter()
            .map(|r| r.get("gavel.type").split(',').count())
            .sum();
        if frames >= FRAMES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {frames} of {FRAMES} frames reached the capture file within 60 s: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    capture.stop();
    let rows = decode(&tshark, &file, port);

    let bid = rows
        .iter()
        .find(|r| r.get("gavel.type") == "0x11")
        .unwrap_or_else(|| panic!("no BID frame decoded: {rows:?}"));
    assert_eq!(bid.get("gavel.request_id"), rid.to_string());
    assert_eq!(bid.get("gavel.flags"), "0x00");
    assert_eq!(bid.get("gavel.length"), "32");
    assert_eq!(bid.get("gavel.bid.auction_id"), auction.to_string());
    assert_eq!(bid.get("gavel.bid.bidder_id"), bidder.to_string());
    assert_eq!(bid.get("gavel.bid.amount"), amount.to_string());
    assert_eq!(bid.get("gavel.bid.bid_id"), bid_id.to_string());
    assert_eq!(
        bid.get("_ws.col.Info"),
        format!("BID auction={auction} bidder={bidder} amount={amount} bid_id={bid_id}")
    );

    let res = rows
        .iter()
        .find(|r| r.get("gavel.type") == "0x90" && r.get("gavel.request_id") == rid.to_string())
        .unwrap_or_else(|| panic!("no RESULT for request {rid} decoded: {rows:?}"));
    assert_eq!(res.get("gavel.flags"), "0x00");
    assert_eq!(res.get("gavel.length"), "17");
    assert_eq!(res.get("gavel.result.status"), "0", "status OK");
    assert_eq!(res.get("gavel.result.value"), amount.to_string());
    assert_eq!(res.get("gavel.result.aux"), bidder.to_string());
    assert_eq!(
        res.get("_ws.col.Info"),
        format!("RESULT OK value={amount} aux={bidder}")
    );
    // The pipelined batch: one packet, all three frames decoded in order.
    let batch_row = rows
        .iter()
        .find(|r| r.get("gavel.type") == "0x13,0x02,0x11")
        .unwrap_or_else(|| panic!("no packet with GET_AUCTION, PING and BID: {rows:?}"));
    assert_eq!(
        batch_row.get("gavel.request_id"),
        format!("{},{},{}", batch[0], batch[1], batch[2])
    );
    assert_eq!(batch_row.get("gavel.bid.amount"), (amount + 5).to_string());
    assert_eq!(
        batch_row.get("_ws.col.Info"),
        format!(
            "GET_AUCTION auction={auction} | PING len=4 payload=\"ping\" | BID auction={auction} bidder={} amount={} bid_id={}",
            bidder + 1,
            amount + 5,
            bid_id + 1
        )
    );
    // The OPEN_AUCTION exchange was decoded too.
    assert!(
        rows.iter().any(|r| r.get("gavel.type") == "0x10"),
        "{rows:?}"
    );

    // gavel-cli decode reads the same real capture (pcapng from tshark).
    let out = common::run(
        common::cli_bin(),
        &[
            "decode",
            "--pcap",
            file.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    let want_bid = format!(
        " → {} BID request_id={rid} auction_id={auction} bidder_id={bidder} amount={amount} bid_id={bid_id}",
        server.addr
    );
    let want_result = format!(
        " ← {} RESULT request_id={rid} status=OK value={amount} aux={bidder}",
        server.addr
    );
    assert!(text.contains(&want_bid), "{text}");
    assert!(text.contains(&want_result), "{text}");
    assert_eq!(text.lines().count(), FRAMES, "{text}");
    let _ = std::fs::remove_file(&file);
}
