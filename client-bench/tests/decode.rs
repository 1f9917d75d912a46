//! `gavel-cli decode`: hex dumps (PROTOCOL.md's worked example), bad bytes,
//! and TCP payloads of synthetic captures (classic pcap and pcapng; Ethernet
//! with IPv4, Linux cooked v2 with IPv6; split, out-of-order and retransmitted
//! segments; a hole in the capture). No server and no tshark needed.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{cli_bin, run, stderr, stdout, temp_path};
use serde_json::Value;

/// PROTOCOL.md §12: BID on auction 42 by bidder 7 for 1500, bid_id 0x1001,
/// request_id 0x01020304, exactly as printed there.
const BID_HEX: &str = "11 00 00 20 01 02 03 04
00 00 00 00 00 00 00 2a  00 00 00 00 00 00 00 07
00 00 00 00 00 00 05 dc  00 00 00 00 00 00 10 01";

/// PROTOCOL.md §12: its reply, RESULT OK value 1500 aux 7.
const RESULT_HEX: &str = "90 00 00 11 01 02 03 04
00
00 00 00 00 00 00 05 dc
00 00 00 00 00 00 00 07";

const BID_LINE: &str = "BID request_id=16909060 auction_id=42 bidder_id=7 amount=1500 bid_id=4097";
const RESULT_LINE: &str = "RESULT request_id=16909060 status=OK value=1500 aux=7";

fn hex_bytes(h: &str) -> Vec<u8> {
    h.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn decode(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["decode"];
    all.extend_from_slice(args);
    let out = run(cli_bin(), &all);
    check_no_panic(&out);
    (out.status.code().unwrap(), stdout(&out), stderr(&out))
}

fn decode_stdin(args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new(cli_bin())
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gavel-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "$ gavel-cli decode {} <<< {input:?}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    check_no_panic(&out);
    (out.status.code().unwrap(), stdout(&out), stderr(&out))
}

fn check_no_panic(out: &Output) {
    assert!(
        !stderr(out).contains("panicked"),
        "gavel-cli panicked: {}",
        stderr(out)
    );
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn worked_example_bid_from_arguments() {
    let args: Vec<&str> = BID_HEX.split_whitespace().collect();
    let (code, out, err) = decode(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), BID_LINE);

    let mut json_args = vec!["--json", "decode"];
    json_args.extend(&args);
    let out = run(cli_bin(), &json_args);
    assert_eq!(out.status.code(), Some(0));
    let j = &json_lines(&stdout(&out))[0];
    assert_eq!(j["type"], "BID");
    assert_eq!(j["request_id"], 0x0102_0304);
    assert_eq!(j["flags"], 0);
    assert_eq!(j["auction_id"], 42);
    assert_eq!(j["bidder_id"], 7);
    assert_eq!(j["amount"], 1500);
    assert_eq!(j["bid_id"], 0x1001);
    assert_eq!(j["offset"], 0);
    assert_eq!(j["frame_len"], 40);
}

#[test]
fn worked_example_result_from_stdin_and_file() {
    let (code, out, _) = decode_stdin(&[], RESULT_HEX);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), RESULT_LINE);

    // Both frames in one dump, colon-separated with 0x prefixes on one line.
    let both: Vec<String> = hex_bytes(BID_HEX)
        .into_iter()
        .chain(hex_bytes(RESULT_HEX))
        .map(|b| format!("0x{b:02x}"))
        .collect();
    let file = temp_path("decode-both.txt");
    std::fs::write(&file, both.join(":")).unwrap();
    let (code, out, _) = decode(&["--hex-file", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0);
    assert_eq!(out.lines().collect::<Vec<_>>(), [BID_LINE, RESULT_LINE]);

    // The replayed variant (flags 01), as JSON.
    let replayed = RESULT_HEX.replacen("90 00", "90 01", 1);
    let (code, out, _) = decode_stdin(&["--json"], &replayed);
    assert_eq!(code, 0);
    let j = &json_lines(&out)[0];
    assert_eq!(j["type"], "RESULT");
    assert_eq!(j["status"], "OK");
    assert_eq!(j["value"], 1500);
    assert_eq!(j["aux"], 7);
    assert_eq!(j["replayed"], true);
    assert_eq!(j["flags"], 1);

    // Forcing the request decoder on a reply is an error, not a guess.
    let (code, _, err) = decode_stdin(&["--as", "request"], RESULT_HEX);
    assert_eq!(code, 1);
    assert!(err.contains("unknown message type 0x90"), "{err}");
}

#[test]
fn bad_bytes_exit_1_with_the_offset() {
    // Not hex at all.
    let (code, out, err) = decode(&["hello"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("line 1, column 1") && err.contains("not a hex digit"),
        "{err}"
    );

    // An odd number of digits.
    let (code, _, err) = decode(&["11 0"]);
    assert_eq!(code, 1);
    assert!(err.contains("odd hex digit"), "{err}");

    // A BID cut short: the first frame decodes, the second is reported at offset 40.
    let mut bytes = hex_bytes(BID_HEX);
    bytes.extend_from_slice(&hex_bytes(BID_HEX)[..20]);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (code, out, err) = decode(&[&hex]);
    assert_eq!(code, 1);
    assert_eq!(out.trim(), BID_LINE);
    assert!(
        err.contains("offset 40")
            && err.contains(
                "incomplete BID frame: header announces 32 payload bytes, only 12 present"
            ),
        "{err}"
    );

    // Only part of a header.
    let (code, _, err) = decode(&["11 00 00"]);
    assert_eq!(code, 1);
    assert!(err.contains("offset 0") && err.contains("3 of 8"), "{err}");

    // Unknown type, then a valid frame: reported, skipped, decoding goes on.
    let (code, out, err) = decode(&["77 00 00 02 00 00 00 09 ab cd", RESULT_HEX]);
    assert_eq!(code, 1);
    assert_eq!(out.trim(), RESULT_LINE);
    assert!(
        err.contains("offset 0") && err.contains("unknown message type 0x77"),
        "{err}"
    );

    // Malformed: BID with bid_id 0, and a RESULT with a wrong length.
    let (code, _, err) = decode(&[&BID_HEX.replace("10 01", "00 00")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("malformed BID: idempotency key must be non-zero"),
        "{err}"
    );
    let (code, _, err) = decode(&["90 00 00 01 00 00 00 01 00"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("malformed RESULT: wrong payload length"),
        "{err}"
    );

    // Nothing at all.
    let (code, _, err) = decode_stdin(&[], "  \n");
    assert_eq!(code, 1);
    assert!(err.contains("no bytes"), "{err}");

    // Random garbage never panics.
    let mut x: u32 = 0x9e37_79b9;
    for len in [1usize, 7, 8, 9, 33, 100, 500] {
        let g: String = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                format!("{:02x}", x as u8)
            })
            .collect();
        let (code, _, _) = decode(&[&g]);
        assert!(code == 0 || code == 1);
    }
}

// ---------------------------------------------------------------------------
// Synthetic captures.
// ---------------------------------------------------------------------------

const CLIENT4: [u8; 4] = [10, 0, 0, 1];
const SERVER4: [u8; 4] = [10, 0, 0, 2];
const CPORT: u16 = 40_001;
const SPORT: u16 = 7070;

#[derive(Clone, Copy)]
enum Link {
    /// Ethernet II + IPv4.
    Eth4,
    /// Linux cooked capture v2 + IPv6.
    Sll2v6,
}

/// One TCP segment as a link-layer frame.
fn packet(link: Link, to_server: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (sp, dp) = if to_server {
        (CPORT, SPORT)
    } else {
        (SPORT, CPORT)
    };
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sp.to_be_bytes());
    tcp.extend_from_slice(&dp.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes()); // ack number (unused)
    tcp.push(6 << 4); // 24-byte header: one 4-byte option
    tcp.push(flags);
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
    tcp.extend_from_slice(&[1, 1, 1, 1]); // NOP options
    tcp.extend_from_slice(payload);
    match link {
        Link::Eth4 => {
            let (s, d) = if to_server {
                (CLIENT4, SERVER4)
            } else {
                (SERVER4, CLIENT4)
            };
            let mut p = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
            p.extend_from_slice(&s);
            p.extend_from_slice(&d);
            p.extend_from_slice(&tcp);
            p.extend_from_slice(&[0; 6]); // Ethernet padding, must be ignored
            p
        }
        Link::Sll2v6 => {
            let c: [u8; 16] = "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
            let s: [u8; 16] = "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
            let (a, b) = if to_server { (c, s) } else { (s, c) };
            let mut p = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 1, 0, 1, 4, 6];
            p.extend_from_slice(&[0; 8]); // link-layer address
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            p.extend_from_slice(&[6, 64]);
            p.extend_from_slice(&a);
            p.extend_from_slice(&b);
            p.extend_from_slice(&tcp);
            p
        }
    }
}

fn linktype(link: Link) -> u32 {
    match link {
        Link::Eth4 => 1,
        Link::Sll2v6 => 276,
    }
}

/// Classic little-endian pcap.
fn pcap_file(link: Link, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65_535u32.to_le_bytes());
    f.extend_from_slice(&linktype(link).to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        f.extend_from_slice(&(1_700_000_000 + i as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(p);
    }
    f
}

/// Big-endian pcapng: section header, one interface, enhanced packet blocks.
fn pcapng_file(link: Link, packets: &[Vec<u8>]) -> Vec<u8> {
    fn block(f: &mut Vec<u8>, btype: u32, body: &[u8]) {
        let pad = (4 - body.len() % 4) % 4;
        let len = (12 + body.len() + pad) as u32;
        f.extend_from_slice(&btype.to_be_bytes());
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(body);
        f.extend_from_slice(&vec![0; pad]);
        f.extend_from_slice(&len.to_be_bytes());
    }
    let mut f = Vec::new();
    let mut shb = 0x1a2b_3c4du32.to_be_bytes().to_vec();
    shb.extend_from_slice(&[0, 1, 0, 0]);
    shb.extend_from_slice(&u64::MAX.to_be_bytes());
    block(&mut f, 0x0a0d_0d0a, &shb);
    let mut idb = (linktype(link) as u16).to_be_bytes().to_vec();
    idb.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff]);
    block(&mut f, 1, &idb);
    for p in packets {
        let mut epb = vec![0; 12];
        epb.extend_from_slice(&(p.len() as u32).to_be_bytes());
        epb.extend_from_slice(&(p.len() as u32).to_be_bytes());
        epb.extend_from_slice(p);
        block(&mut f, 6, &epb);
    }
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

/// A session: handshake; OPEN_AUCTION in one segment; the worked example's
/// BID split in two segments that arrive out of order, plus a retransmission;
/// the server's RESULT for OPEN, then a BID_UPDATE push and the BID's RESULT
/// in one segment. Sequence numbers start near 2^32 to cover wrap-around.
fn session(link: Link) -> Vec<Vec<u8>> {
    session_from(link, 0xffff_fff0)
}

fn session_from(link: Link, c_isn: u32) -> Vec<Vec<u8>> {
    let open = hex_bytes(
        "10 00 00 20 00 00 00 01  00 00 00 00 00 00 00 2a  00 00 00 00 00 00 00 64
         00 00 00 00 00 00 00 0a  00 00 00 00 00 00 00 00",
    );
    let open_ok =
        hex_bytes("90 00 00 11 00 00 00 01 00  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
    let push = hex_bytes(
        "c0 00 00 20 00 00 00 00  00 00 00 00 00 00 00 2a  00 00 00 00 00 00 05 dc
         00 00 00 00 00 00 00 07  00 00 00 00 00 00 00 01",
    );
    let bid = hex_bytes(BID_HEX);
    let mut replies = push;
    replies.extend_from_slice(&hex_bytes(RESULT_HEX));

    let s_isn: u32 = 1_000;
    let c1 = c_isn.wrapping_add(1);
    let c2 = c1.wrapping_add(open.len() as u32);
    let c3 = c2.wrapping_add(13);
    let s1 = s_isn + 1;
    let s2 = s1 + open_ok.len() as u32;
    vec![
        packet(link, true, c_isn, SYN, &[]),         // 1
        packet(link, false, s_isn, SYN | ACK, &[]),  // 2
        packet(link, true, c1, ACK, &[]),            // 3
        packet(link, true, c1, PSH_ACK, &open),      // 4
        packet(link, false, s1, PSH_ACK, &open_ok),  // 5
        packet(link, true, c3, PSH_ACK, &bid[13..]), // 6: second part first
        packet(link, true, c2, PSH_ACK, &bid[..13]), // 7: completes the BID
        packet(link, true, c1, PSH_ACK, &open),      // 8: retransmission
        packet(link, false, s2, PSH_ACK, &replies),  // 9: push + RESULT
    ]
}

fn write_temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = temp_path(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn expected_lines(client: &str, server: &str) -> Vec<String> {
    vec![
        format!("#4 {client} → {server} OPEN_AUCTION request_id=1 auction_id=42 reserve=100 min_increment=10 ends_at_ms=0"),
        format!("#5 {client} ← {server} RESULT request_id=1 status=OK value=0 aux=0"),
        format!("#7 {client} → {server} {BID_LINE}"),
        format!("#9 {client} ← {server} BID_UPDATE request_id=0 auction_id=42 high_bid=1500 high_bidder=7 bid_count=1"),
        format!("#9 {client} ← {server} {RESULT_LINE}"),
    ]
}

#[test]
fn pcap_ethernet_ipv4() {
    let file = write_temp(
        "decode-eth4.pcap",
        &pcap_file(Link::Eth4, &session(Link::Eth4)),
    );
    let path = file.to_str().unwrap();
    let (code, out, err) = decode(&["--pcap", path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        expected_lines("10.0.0.1:40001", "10.0.0.2:7070")
    );

    // JSON, with the port given explicitly.
    let out = run(
        cli_bin(),
        &["--json", "decode", "--pcap", path, "--port", "7070"],
    );
    assert_eq!(out.status.code(), Some(0));
    let js = json_lines(&stdout(&out));
    assert_eq!(js.len(), 5);
    let bid = &js[2];
    assert_eq!(bid["type"], "BID");
    assert_eq!(bid["direction"], "client_to_server");
    assert_eq!(bid["client"], "10.0.0.1:40001");
    assert_eq!(bid["server"], "10.0.0.2:7070");
    assert_eq!(bid["packet"], 7);
    assert_eq!(bid["stream_offset"], 40);
    assert_eq!(
        (
            &bid["auction_id"],
            &bid["bidder_id"],
            &bid["amount"],
            &bid["bid_id"]
        ),
        (
            &Value::from(42),
            &Value::from(7),
            &Value::from(1500),
            &Value::from(4097)
        )
    );
    let res = &js[4];
    assert_eq!(res["type"], "RESULT");
    assert_eq!(res["direction"], "server_to_client");
    assert_eq!(res["request_id"], 0x0102_0304);
    assert_eq!(
        (&res["status"], &res["value"], &res["aux"]),
        (&Value::from("OK"), &Value::from(1500), &Value::from(7))
    );
    assert_eq!(js[3]["type"], "BID_UPDATE");

    // Another port: nothing to decode is an error, not silence.
    let (code, out, err) = decode(&["--pcap", path, "--port", "7071"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("no TCP payload on port 7071"), "{err}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn pcap_port_reuse_is_two_connections() {
    let mut pkts = session(Link::Eth4);
    pkts.extend(session_from(Link::Eth4, 77_000));
    let file = write_temp("decode-reuse.pcap", &pcap_file(Link::Eth4, &pkts));
    let (code, out, err) = decode(&["--pcap", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert_eq!(
        lines[7],
        format!("#16 10.0.0.1:40001 → 10.0.0.2:7070 {BID_LINE}")
    );
}

#[test]
fn pcapng_linux_cooked_ipv6() {
    let file = write_temp(
        "decode-sll2v6.pcapng",
        &pcapng_file(Link::Sll2v6, &session(Link::Sll2v6)),
    );
    let (code, out, err) = decode(&["--pcap", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        expected_lines("[fd00::1]:40001", "[fd00::2]:7070")
    );
}

#[test]
fn pcap_problems_are_reported() {
    // A hole: the packet completing the BID (7) was not captured.
    let mut pkts = session(Link::Eth4);
    pkts.remove(6);
    let file = write_temp("decode-hole.pcap", &pcap_file(Link::Eth4, &pkts));
    let (code, out, err) = decode(&["--pcap", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 1);
    assert!(
        out.contains("OPEN_AUCTION") && out.contains("BID_UPDATE"),
        "{out}"
    );
    assert!(!out.contains(" BID request_id"), "{out}");
    assert!(
        err.contains("offset 40: 13 bytes missing from the capture"),
        "{err}"
    );

    // A file cut in the middle of a packet: what is complete still decodes.
    let whole = pcap_file(Link::Eth4, &session(Link::Eth4));
    let file = write_temp("decode-cut.pcap", &whole[..whole.len() - 10]);
    let (code, out, err) = decode(&["--pcap", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 1);
    assert!(out.contains(BID_LINE), "{out}");
    assert!(err.contains("file ends inside packet 9"), "{err}");

    // Not a capture at all.
    let file = write_temp("decode-notpcap.pcap", b"hello, world");
    let (code, _, err) = decode(&["--pcap", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 1);
    assert!(err.contains("not a pcap or pcapng file"), "{err}");

    // Missing file.
    let (code, _, err) = decode(&["--pcap", "/nonexistent/x.pcap"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");

    // Garbage in the stream is reported with its packet and offset.
    let mut pkts = session(Link::Eth4);
    pkts.push(packet(
        Link::Eth4,
        true,
        0xffff_fff1u32.wrapping_add(80),
        PSH_ACK,
        &[0x77, 0, 0, 0, 0, 0, 0, 5],
    ));
    let file = write_temp("decode-garbage.pcap", &pcap_file(Link::Eth4, &pkts));
    let (code, out, err) = decode(&["--pcap", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(
        err.contains("packet 10")
            && err.contains("offset 80")
            && err.contains("unknown message type 0x77"),
        "{err}"
    );
}
