#!/usr/bin/env python3
"""Cross-node mode against Redis alone, like for like, in one sitting.

Starts a throwaway redis-server (no persistence) on a free port, then for
each workload runs, alternating, N times each:

  redis    client-bench --target redis: one EVALSHA of the same Lua script per
           request, straight to Redis (the one-CAS-per-request baseline)
  gavel-1  one gavel-server --redis --store memory, client-bench through it
  gavel-3  three gavel-servers on the same Redis, one client-bench per node
           (connections split between them), run concurrently, rps summed
  +filter  the same with --outbid-filter true

Workloads (100 connections x pipeline 16 in total, --duration S each):

  climb-1     one auction, rising bids (client-bench's default)
  climb-own   100 auctions, each connection on its own (--skew per-conn):
              outcomes do not depend on how the server interleaves
              connections, so both sides do the same work per request
  chase-hot   one hot auction, bids one step above the last price seen
              (--bidding chase): a herd on stale prices
  chase-zipf  100 auctions, zipf:1.2 skew, --bidding chase

Prints a markdown table of medians (req/s, worst p99 across clients, share of
OK outcomes, Redis's own time per script call from INFO commandstats) and each
Gavel column's ratio to Redis alone measured in the same sitting. Client and
servers share this machine's cores. An accepted bid costs Redis more than a
losing one (HSET + PUBLISH), so compare ratios where the OK shares match.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")

WORKLOADS = {
    "climb-1": ["--auctions", "1"],
    "climb-own": ["--auctions", "100", "--skew", "per-conn"],
    "chase-hot": ["--auctions", "1", "--bidding", "chase"],
    "chase-zipf": ["--auctions", "100", "--skew", "zipf:1.2", "--bidding", "chase"],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early (status {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within 10 s")


def redis_cli(port, *args):
    subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                   stdout=subprocess.DEVNULL)


def bench(args, conns, extra, tmp, i):
    out = os.path.join(tmp, f"bench{i}.json")
    cmd = [os.path.join(BIN, "client-bench"), "--no-progress", "--json", out,
           "--connections", str(conns), "--pipeline", "16",
           "--duration", str(args.duration), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), out


def read(out):
    try:
        with open(out) as f:
            d = json.load(f)
        ok = d["outcomes"].get("OK", 0) / max(d["succeeded"], 1)
        if d.get("failed", 0) or d.get("lost", 0):
            print(f"  note: {d.get('failed', 0)} requests answered ERROR {d.get('errors')}, "
                  f"{d.get('lost', 0)} lost", file=sys.stderr)
        return d["rps"], d["p99_us"], ok
    except (OSError, KeyError, ValueError):
        return float("nan"), float("nan"), float("nan")


def evalsha_usec_per_call(port):
    """Redis's own time per script call since the last CONFIG RESETSTAT."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            for field in line.split(":", 1)[1].split(","):
                k, _, v = field.partition("=")
                if k == "usec_per_call":
                    return float(v)
    return float("nan")


def one_run(args, redis_port, target, workload, tmp):
    """One run; returns (rps, p99_us, ok_share, redis µs per script call)."""
    res = load_run(args, redis_port, target, workload, tmp)
    return (*res, evalsha_usec_per_call(redis_port))


def load_run(args, redis_port, target, workload, tmp):
    redis_cli(redis_port, "FLUSHALL")
    redis_cli(redis_port, "CONFIG", "RESETSTAT")
    load = WORKLOADS[workload]
    url = f"redis://127.0.0.1:{redis_port}"
    if target == "redis":
        p, out = bench(args, 100, ["--target", "redis", "--redis-url", url, *load], tmp, 0)
        p.wait()
        return read(out)
    nodes = 3 if target.startswith("gavel-3") else 1
    servers = []
    try:
        addrs = []
        for n in range(nodes):
            port = free_port()
            cmd = [os.path.join(BIN, "gavel-server"), "--listen", f"127.0.0.1:{port}",
                   "--store", "memory", "--redis", url, "--node-id", str(n)]
            if target.endswith("+filter"):
                cmd += ["--outbid-filter", "true"]
            s = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(s)
            wait_port(port, s, "gavel-server")
            addrs.append(f"127.0.0.1:{port}")
        # Split 100 connections over the nodes; one id base so every client
        # bids on the same auctions (the first one opens them, the others
        # find them already open with the same parameters: a replay), and
        # disjoint connection numbers so bidders and keys do not collide.
        base = str(int(time.time() * 1000) % (1 << 40) << 16)
        splits = [100 // nodes + (1 if i < 100 % nodes else 0) for i in range(nodes)]
        offsets = [sum(splits[:i]) for i in range(nodes)]
        procs = [bench(args, c, ["--addr", a, "--id-base", base, "--conn-offset", str(o), *load],
                       tmp, i)
                 for i, (a, c, o) in enumerate(zip(addrs, splits, offsets))]
        results = []
        for p, out in procs:
            p.wait()
            results.append(read(out))
        rps = sum(r[0] for r in results)
        p99 = max(r[1] for r in results)
        ok = statistics.mean(r[2] for r in results)
        return rps, p99, ok
    finally:
        for s in servers:
            s.send_signal(signal.SIGTERM)
        for s in servers:
            try:
                s.wait(timeout=10)
            except subprocess.TimeoutExpired:
                s.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    ap.add_argument("--duration", type=float, default=5, help="seconds per run")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated subset of: " + ", ".join(WORKLOADS))
    ap.add_argument("--targets", default="redis,gavel-1,gavel-1+filter,gavel-3,gavel-3+filter",
                    help="comma-separated subset of: redis, gavel-1, gavel-1+filter, "
                         "gavel-3, gavel-3+filter (redis is always run: it is the peer)")
    args = ap.parse_args()
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        sys.exit("needs redis-server and redis-cli (Debian: apt-get install redis-server)")
    for b in ("gavel-server", "client-bench"):
        if not os.path.exists(os.path.join(BIN, b)):
            sys.exit(f"missing {BIN}/{b}: cargo build --release -p gavel-server -p client-bench")
    workloads = [w for w in args.workloads.split(",") if w]
    targets = ["redis"] + [t for t in args.targets.split(",") if t and t != "redis"]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}")

    tmp = tempfile.mkdtemp(prefix="gavel-xnode.")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(redis_port, redis, "redis-server")
        rows = []
        for w in workloads:
            cells = {t: [] for t in targets}
            for r in range(args.runs):
                for t in targets:
                    res = one_run(args, redis_port, t, w, tmp)
                    cells[t].append(res)
                    print(f"{w} run {r + 1}/{args.runs} {t}: {res[0]:.0f} req/s, "
                          f"p99 {res[1] / 1000:.1f} ms, OK {res[2]:.1%}, "
                          f"Redis {res[3]:.1f} µs/script", file=sys.stderr, flush=True)
            rows.append((w, cells))
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(xs, i):
        return statistics.median(x[i] for x in xs)

    print(f"\n| workload | {' | '.join(targets)} |")
    print("|---|" + "---:|" * len(targets))
    for w, cells in rows:
        base = med(cells["redis"], 0)
        out = []
        for t in targets:
            rps, p99, ok = med(cells[t], 0), med(cells[t], 1), med(cells[t], 2)
            us = med(cells[t], 3)
            ratio = "" if t == "redis" else f" ({rps / base:.2f}×)"
            out.append(f"{rps / 1000:.1f}k{ratio}, p99 {p99 / 1000:.0f} ms, OK {ok:.0%}, "
                       f"{us:.1f} µs/script")
        print(f"| {w} | {' | '.join(out)} |")
    print(f"\nMedians of {args.runs} run(s) of {args.duration:g} s, 100 connections × pipeline 16 "
          f"in total; ratios to Redis alone in the same sitting; {os.cpu_count()} cores shared "
          "by clients, servers and Redis.")


if __name__ == "__main__":
    main()
