#!/usr/bin/env python3
"""Abuse probe: does every bound of gavel-server hold against a hostile client?

Starts a release gavel-server (target/release/gavel-server, built with
`cargo build --release -p gavel-server` if missing) on loopback, three
times, and plays the abusive client of issue 17 against it:

  1. memory  one server with a stated memory budget (--max-auctions,
             --max-sales, --max-holdings, key caps, --max-subscriptions,
             --output-budget):
             one client opens auctions, sales, buyer holdings, idempotency keys (accepted and
             rejected) and subscriptions without end, and floods PINGs it
             never reads. Each flood runs until the server has answered BUSY
             at the cap for a while (or a time limit). The server's RSS is
             sampled from /proc throughout: its peak must stay under the
             budget.
  2. silent  --max-connections 100 --idle-timeout 1s: 100 connections that
             never send a byte fill the server; they must all be closed at
             the idle timeout, and a new client get in.
  3. auth    --auth-token: every frame but a valid HELLO — garbage, unknown
             types, malformed HELLOs, requests, a bad token — must get ERROR
             UNAUTHORIZED and a close.

Loopback only, python3 standard library only, bounded in time (a few
minutes at most). Exit status 0 when every bound held, 1 otherwise.

    scripts/abuse-probe.py [--budget-mib 512] [--phase-seconds 60]
"""

import argparse
import os
import socket
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "gavel-server")

# Message types (PROTOCOL.md §3, §4).
HELLO, PING = 0x01, 0x02
OPEN_AUCTION, BID, GET_AUCTION = 0x10, 0x11, 0x13
OPEN_SALE, BUY = 0x20, 0x21
SUBSCRIBE = 0x30
WELCOME, PONG, RESULT, ERROR = 0x81, 0x82, 0x90, 0xBF
ERROR_NAMES = {1: "MALFORMED", 2: "UNKNOWN_TYPE", 3: "FRAME_TOO_LARGE",
               4: "UNAUTHORIZED", 5: "BUSY", 6: "RATE_LIMITED",
               7: "UNAVAILABLE", 8: "IDEMPOTENCY_CONFLICT",
               9: "UNSUPPORTED_VERSION", 10: "SHUTTING_DOWN", 11: "IN_DOUBT"}
STATUS_NAMES = {0: "OK", 1: "OUTBID", 2: "BELOW_RESERVE", 3: "CLOSED",
                4: "NOT_FOUND", 5: "ALREADY_EXISTS", 6: "SOLD_OUT",
                7: "LIMIT_EXCEEDED", 8: "NOT_STARTED"}

HEADER = struct.Struct(">BBHI")
FAILED = []


def frame(t, rid, payload=b""):
    return HEADER.pack(t, 0, len(payload), rid) + payload


def check(ok, what):
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILED.append(what)


def mib(n):
    return f"{n / (1 << 20):.0f} MiB"


class Server:
    """A gavel-server child on 127.0.0.1, port and metrics port chosen by it."""

    def __init__(self, args):
        self.p = subprocess.Popen(
            [BIN, "--listen", "127.0.0.1:0", "--store", "memory",
             "--metrics-listen", "127.0.0.1:0"] + args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, RUST_LOG="warn"))
        line = self.p.stdout.readline()
        host, port = line.strip().rsplit(" ", 1)[1].rsplit(":", 1)
        self.addr = (host, int(port))
        while True:
            line = self.p.stderr.readline()
            if line.startswith("metrics on "):
                h, p = line.split()[-1].rsplit(":", 1)
                self.metrics_addr = (h, int(p))
                break
        threading.Thread(target=self.p.stderr.read, daemon=True).start()

    def status(self, key):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss(self):
        return self.status("VmRSS")

    def peak(self):
        return self.status("VmHWM")

    def metric(self, name):
        s = socket.create_connection(self.metrics_addr, timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = b""
        while chunk := s.recv(1 << 16):
            body += chunk
        s.close()
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def stop(self):
        self.p.kill()
        self.p.wait()


class Conn:
    """A pipelining client speaking raw frames."""

    def __init__(self, addr, timeout=30):
        self.s = socket.create_connection(addr, timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def frames(self, n):
        """Reads n frames: [(type, request_id, payload)]."""
        out = []
        buf = self.buf
        while len(out) < n:
            while len(buf) >= 8:
                t, _, length, rid = HEADER.unpack_from(buf)
                if len(buf) < 8 + length:
                    break
                out.append((t, rid, bytes(buf[8:8 + length])))
                del buf[:8 + length]
                if len(out) == n:
                    break
            if len(out) < n:
                chunk = self.s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed by the server")
                buf += chunk
        return out

    def call(self, data, n):
        self.s.sendall(data)
        return self.frames(n)

    def close(self):
        self.s.close()


def outcome(t, payload):
    """A reply as a short label: a RESULT status or 'BUSY: message'."""
    if t == RESULT:
        return STATUS_NAMES.get(payload[0], str(payload[0]))
    if t == ERROR:
        code, mlen = struct.unpack_from(">HH", payload)
        return f"{ERROR_NAMES.get(code, code)}: {payload[4:4 + mlen].decode()}"
    return f"type 0x{t:02x}"


def flood(server, conn, make, label, seconds, cap_words, batch=2048, after=2.0):
    """Sends make(i) for i = 1, 2, ... in pipelined batches until the server
    has answered an ERROR naming `cap_words` for `after` seconds, or
    `seconds` pass. Returns (counts by outcome, requests sent)."""
    counts = {}
    i = 0
    start = time.monotonic()
    capped_at = None
    while True:
        now = time.monotonic()
        if now - start > seconds or (capped_at and now - capped_at > after):
            break
        data = b"".join(make(i + k + 1) for k in range(batch))
        for t, _, payload in conn.call(data, batch):
            o = outcome(t, payload)
            counts[o] = counts.get(o, 0) + 1
            if capped_at is None and cap_words and cap_words in o:
                capped_at = time.monotonic()
        i += batch
    took = time.monotonic() - start
    print(f"  {label}: {i:,} requests in {took:.1f} s, RSS now {mib(server.rss())}")
    for o, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"      {n:>10,}  {o}")
    return counts, i


class RssSampler(threading.Thread):
    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.max, self.stop_flag = server, 0, False

    def run(self):
        while not self.stop_flag:
            try:
                self.max = max(self.max, self.server.rss())
            except OSError:
                return
            time.sleep(0.05)


def memory_phase(budget_mib, seconds):
    print(f"1. memory: one client, everything without end; budget {budget_mib} MiB RSS")
    caps = {
        "--shards": "2",
        "--max-auctions": "1000000",
        "--max-sales": "250000",
        "--max-holdings": "200000",
        "--idempotency-max-keys": "400000",
        "--idempotency-max-rejected-keys": "100000",
        "--max-subscriptions": "200000",
        "--max-subscriptions-per-conn": "10000",
        "--output-budget": str(32 << 20),
        "--output-cap": str(64 << 20),
        "--max-payload": "65535",
    }
    print("   server: " + " ".join(f"{k} {v}" for k, v in caps.items()))
    print("   stated budget (bytes each as measured): auctions 1M x ~85 B = 81 MiB,"
          " sales 250k x ~265 B = 63 MiB, holdings 200k x ~30 B = 6 MiB,"
          " keys 500k x <= ~152 B = 73 MiB,")
    print("   subscriptions 200k x ~120 B = 23 MiB, unsent output 32 MiB (+50% buffer"
          " slack), reply queue <= 23 MiB, base and allocator slack ~30 MiB:"
          f" ~350 MiB < {budget_mib} MiB")
    s = Server([a for kv in caps.items() for a in kv])
    sampler = RssSampler(s)
    sampler.start()
    print(f"   RSS at start {mib(s.rss())}")
    c = Conn(s.addr)
    pack_auction = struct.Struct(">QQQQ").pack
    pack_sale = struct.Struct(">QQIQQ").pack
    pack_bid = struct.Struct(">QQQQ").pack

    counts, _ = flood(s, c, lambda i: frame(OPEN_AUCTION, i, pack_auction(i, 0, 1, 0)),
                      "OPEN_AUCTION, new ids", seconds, "auction limit")
    check(any("auction limit reached" in o for o in counts),
          "auctions stop at --max-auctions with ERROR BUSY \"auction limit reached\"")
    counts, _ = flood(s, c, lambda i: frame(OPEN_SALE, i, pack_sale(i, 1 << 40, 0, 0, 0)),
                      "OPEN_SALE, new SKUs", seconds, "sale limit")
    check(any("sale limit reached" in o for o in counts),
          "sales stop at --max-sales with ERROR BUSY \"sale limit reached\"")
    # Holdings: one huge sale, every BUY from a new buyer (fresh order ids).
    pack_buy = struct.Struct(">QQIQ").pack
    counts, _ = flood(s, c, lambda i: frame(BUY, i, pack_buy(1, i, 1, i)),
                      "BUY, new buyers of one sale", seconds, "holding limit")
    check(any("holding limit reached" in o for o in counts),
          "holdings stop at --max-holdings with ERROR BUSY \"holding limit reached\"")
    # Rejected keys: bids below the high bid with fresh keys; the oldest are
    # dropped (a retry of one is evaluated afresh), memory stays flat.
    high = 1 << 40
    c.call(b"".join(frame(BID, a, pack_bid(a, 7, high, a)) for a in range(1, 65)), 64)
    counts, n = flood(s, c, lambda i: frame(BID, i, pack_bid(i % 64 + 1, 8, 1, 64 + i)),
                      "BID, low, fresh keys (rejected)", min(seconds, 8), None)
    check(counts.get("OUTBID", 0) > 100000, "rejected keys: OUTBID, dropped past their cap")
    # Accepted keys: rising bids with fresh bid_ids over 64 auctions.
    counts, _ = flood(
        s, c, lambda i: frame(BID, i, pack_bid(i % 64 + 1, 7, high + i, 64 + n + i)),
        "BID, rising, fresh keys (accepted)", seconds, "BUSY")
    check(any(o.startswith("BUSY") for o in counts),
          "accepted keys stop at --idempotency-max-keys with ERROR BUSY")
    # Subscriptions: one connection, then twenty more, to new auctions.
    sub = struct.Struct(">Q").pack
    counts, _ = flood(s, c, lambda i: frame(SUBSCRIBE, i, sub(i)),
                      "SUBSCRIBE, one connection", seconds, "too many subscriptions")
    check(any("too many subscriptions on this connection" in o for o in counts),
          "one connection stops at --max-subscriptions-per-conn with ERROR BUSY")
    others = [Conn(s.addr) for _ in range(20)]
    total = {}
    for k, o in enumerate(others):
        base = (k + 1) * 20000
        for t, _, p in o.call(b"".join(frame(SUBSCRIBE, i, sub(base + i))
                                       for i in range(1, 10001)), 10000):
            lbl = outcome(t, p)
            total[lbl] = total.get(lbl, 0) + 1
    print(f"  SUBSCRIBE, 20 more connections x 10,000: RSS now {mib(s.rss())}")
    for o, n in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"      {n:>10,}  {o}")
    check(any("subscription limit reached" in o for o in total),
          "subscriptions stop at --max-subscriptions with ERROR BUSY")
    print(f"   gavel_subscriptions = {s.metric('gavel_subscriptions'):,.0f}")
    # Output: four connections send 60 KB PINGs and never read the PONGs;
    # --output-cap alone would let them hold 4 x 64 MiB.
    ping = frame(PING, 1, b"x" * 60000)

    def no_read():
        x = socket.create_connection(s.addr)
        x.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        x.settimeout(1.0)
        sent = 0
        try:
            while sent < 256 << 20:
                x.sendall(ping)
                sent += len(ping)
        except OSError:
            pass
        return x

    holders = []
    threads = [threading.Thread(target=lambda: holders.append(no_read())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    unsent = s.metric("gavel_output_unsent_bytes")
    print(f"  PING flood, 4 connections never reading: unsent {mib(unsent)}, RSS now {mib(s.rss())}")
    check(unsent <= (32 << 20) + 4 * (1 << 20),
          "unsent output stays at --output-budget (32 MiB), not 4 x --output-cap")
    for h in holders:
        h.close()
    for o in others:
        o.close()
    c.close()
    time.sleep(0.5)
    sampler.stop_flag = True
    sampler.join()
    peak = max(sampler.max, s.peak())
    print(f"   auctions {s.metric('gavel_auctions'):,.0f}, sales {s.metric('gavel_sales'):,.0f}")
    print(f"   peak RSS {mib(peak)} (VmHWM), budget {budget_mib} MiB")
    check(peak < budget_mib << 20, f"peak RSS under the {budget_mib} MiB budget")
    s.stop()


def silent_phase():
    print("2. silent: 100 connections that never send a byte,"
          " --max-connections 100 --idle-timeout 1s")
    s = Server(["--max-connections", "100", "--idle-timeout", "1s"])
    t0 = time.monotonic()
    silent = [socket.create_connection(s.addr) for _ in range(100)]
    deadline = time.monotonic() + 5
    while s.metric("gavel_connections_open") != 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    extra = Conn(s.addr, timeout=5)
    try:
        t, rid, p = extra.frames(1)[0]
        refused = outcome(t, p)
    except (ConnectionError, OSError) as e:
        refused = f"no reply ({e})"
    print(f"   the 101st connection: {refused}")
    check(refused.startswith("BUSY"), "the server is full: the 101st gets ERROR BUSY")
    closed_at = []
    for x in silent:
        x.settimeout(10)
        try:
            data = x.recv(1)
            closed_at.append(time.monotonic() - t0 if data == b"" else None)
        except OSError:
            closed_at.append(None)
        x.close()
    done = [t for t in closed_at if t is not None]
    if done:
        print(f"   closed by the server: {len(done)} of 100, between"
              f" {min(done):.2f} s and {max(done):.2f} s after connecting")
    check(len(done) == 100 and min(done) >= 1.0,
          "all 100 closed (without a reply) at the idle timeout, none before")
    c = Conn(s.addr, timeout=5)
    t, rid, p = c.call(frame(PING, 7, b"hi"), 1)[0]
    check(t == PONG, "a new client gets in (PING answered PONG)")
    idle = 'gavel_connections_closed_total{reason="idle"}'
    print(f"   {idle} = {s.metric(idle):.0f}")
    s.stop()


def auth_phase():
    print("3. auth: --auth-token sesame; one fresh connection per frame")
    s = Server(["--auth-token", "sesame"])

    def hello(version, token, extra=b""):
        return struct.pack(">HB", version, len(token)) + token + extra

    cases = [
        ("garbage (type 0xde)", HEADER.pack(0xDE, 0xAD, 56, 10) + os.urandom(56), 10),
        ("unknown type 0x7f", frame(0x7F, 11, b"?"), 11),
        ("HELLO, token_len wrong", frame(HELLO, 12, hello(1, b"sesame", b"!")), 12),
        ("HELLO, 1-byte payload", frame(HELLO, 13, b"\0"), 13),
        ("HELLO, bad token", frame(HELLO, 14, hello(1, b"open")), 14),
        ("PING", frame(PING, 15, b"hi"), 15),
        ("OPEN_AUCTION", frame(OPEN_AUCTION, 16, struct.pack(">QQQQ", 1, 0, 1, 0)), 16),
        ("BID", frame(BID, 17, struct.pack(">QQQQ", 1, 7, 10, 1)), 17),
        ("BID, key 0", frame(BID, 18, struct.pack(">QQQQ", 1, 7, 10, 0)), 18),
        ("GET_AUCTION, 2-byte payload", frame(GET_AUCTION, 19, b"\1\2"), 19),
        ("header over max_payload", HEADER.pack(PING, 0, 0xFFFF, 20), 20),
        ("SUBSCRIBE", frame(SUBSCRIBE, 21, struct.pack(">Q", 1)), 21),
        ("1,000 PINGs pipelined", b"".join(frame(PING, 22 + i, b"") for i in range(1000)), 22),
    ]
    for what, data, rid in cases:
        c = Conn(s.addr, timeout=10)
        c.s.sendall(data)
        got = []
        try:
            while True:
                got.extend(c.frames(1))
        except ConnectionError:
            closed = "closed"
        except OSError as e:
            closed = f"not closed ({e})"
        c.close()
        labels = [outcome(t, p) for t, _, p in got]
        ok = (closed == "closed" and len(got) == 1 and labels[0].startswith("UNAUTHORIZED")
              and (rid is None or got[0][1] == rid))
        shown = ", ".join(labels) if labels else "nothing"
        check(ok, f"{what:<28} -> {shown}; {closed}")
    c = Conn(s.addr, timeout=10)
    t, rid, p = c.call(frame(HELLO, 99, hello(1, b"sesame")), 1)[0]
    t2, _, _ = c.call(frame(PING, 100, b"x"), 1)[0]
    check(t == WELCOME and t2 == PONG, "a valid HELLO gets WELCOME, and the session goes on")
    c.close()
    s.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-mib", type=int, default=512)
    ap.add_argument("--phase-seconds", type=float, default=60,
                    help="time limit of each flood (default 60)")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        print("building the release server ...", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "gavel-server"],
                       cwd=ROOT, check=True)
    t0 = time.monotonic()
    memory_phase(args.budget_mib, args.phase_seconds)
    silent_phase()
    auth_phase()
    print(f"{'every bound held' if not FAILED else f'{len(FAILED)} check(s) FAILED'}"
          f" ({time.monotonic() - t0:.0f} s)")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
