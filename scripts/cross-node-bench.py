#!/usr/bin/env python3
"""Cross-node mode against Redis alone, like for like, in one sitting.

Starts a throwaway redis-server (no persistence) on a free port, then for
each workload runs, alternating, N times each:

  cas        the minimal compare-and-set (GET, compare, SET if greater: one
             EVALSHA of a three-line script) from redis-benchmark -c 100 -P 16
             over 10,000 keys and random amounts: after a warm-up most calls
             only compare (the issue's yardstick)
  cas-write  the same script over 10^9 keys: nearly every call writes
  redis      client-bench --target redis: one EVALSHA of Gavel's own script per
             request, straight to Redis (the one-CAS-per-request baseline)
  gavel-1    one gavel-server --redis --store memory, client-bench through it
  gavel-3    three gavel-servers on the same Redis, one client-bench per node
             (connections split between them), run concurrently, rps summed
  +filter    the same with --outbid-filter true

With --before ROOT (another checkout with its own target/release), every
Gavel target also runs with that checkout's binaries (and so its scripts),
as `target@before`, alternating with the current build in the same sitting.

With --cluster, a 3-master Redis Cluster (all on this box) is started too,
and the gavel targets also run against it (`gavel-1/cluster`, ...:
--redis-cluster, the scripts spread over the masters by slot); Redis µs per
call is then the masters' EVALSHA time over their calls, and Redis CPU the
sum over the masters: the figure that predicts scaling on hardware where
each master has its own core (here all share two).

Workloads (100 connections x pipeline 16 in total, --duration S each):

  climb-1     one auction, rising bids (client-bench's default)
  climb-own   100 auctions, each connection on its own (--skew per-conn):
              outcomes do not depend on how the server interleaves
              connections, so both sides do the same work per request;
              mostly accepted bids
  chase-hot   one hot auction, bids one step above the last price seen
              (--bidding chase): a herd on stale prices, nearly all rejected
  chase-zipf  100 auctions, zipf:1.2 skew, --bidding chase

Prints, per workload, a markdown table of medians: req/s, worst p99 across
clients, share of OK outcomes, Redis's own time per script call (INFO
commandstats, EVALSHA usec_per_call) and its ratio to the minimal CAS's
measured in the same sitting, Redis CPU (utime+stime of redis-server) per
call and per accepted bid. An accepted bid costs Redis more than a losing
one (HSET + PUBLISH), so compare with `cas-write` where most bids are OK and
with `cas` where most are rejected. Client and servers share this machine's
cores, so Redis's µs per call rise with the load around it: trust ratios
within a sitting, not absolute numbers across sittings.

With --memory, also measures what Redis holds (INFO memory used_memory
deltas, MEMORY USAGE): bytes per open auction, per remembered key of an
accepted bid (in small auctions and in one large one) and per rejected bid,
driving the scripts of lua/ (and of the --before checkout) directly.
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
NAN = float("nan")
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
CONNS = 100
PIPELINE = 16

WORKLOADS = {
    "climb-1": ["--auctions", "1"],
    "climb-own": ["--auctions", "100", "--skew", "per-conn"],
    "chase-hot": ["--auctions", "1", "--bidding", "chase"],
    "chase-zipf": ["--auctions", "100", "--skew", "zipf:1.2", "--bidding", "chase"],
}

# GET, compare with ARGV, SET if greater: the least a bid can be
# (scripts/durable-bench.py measures the same script).
CAS_LUA = ('local c = tonumber(redis.call("GET", KEYS[1]) or "-1") '
           'local b = tonumber(ARGV[1]) '
           'if b > c then redis.call("SET", KEYS[1], ARGV[1]) return 1 end '
           'return 0')
CAS_KEYS = {"cas": 10_000, "cas-write": 1_000_000_000}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                          capture_output=True, text=True).stdout


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return NAN


def commandstats(port):
    """{command: (calls, usec_per_call)} since the last CONFIG RESETSTAT."""
    out = {}
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            d = dict(kv.split("=", 1) for kv in rest.split(",") if "=" in kv)
            out[name] = (int(d.get("calls", 0)), float(d.get("usec_per_call", NAN)))
    return out


def bench(bin_dir, args, conns, extra, tmp, i):
    out = os.path.join(tmp, f"bench{i}.json")
    cmd = [os.path.join(bin_dir, "client-bench"), "--no-progress", "--json", out,
           "--connections", str(conns), "--pipeline", str(PIPELINE),
           "--duration", str(args.duration), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), out


def read(out):
    """(rps, p99 µs, OK count, answered count) of one client-bench run."""
    try:
        with open(out) as f:
            d = json.load(f)
        if d.get("failed", 0) or d.get("lost", 0):
            log(f"  note: {d.get('failed', 0)} requests answered ERROR {d.get('errors')}, "
                f"{d.get('lost', 0)} lost")
        return d["rps"], d["p99_us"], d["outcomes"].get("OK", 0), d["succeeded"]
    except (OSError, KeyError, ValueError):
        return NAN, NAN, 0, 0


def run_result(rps=NAN, p99=NAN, ok=NAN, us=NAN, cpu_call=NAN, cpu_ok=NAN):
    return {"rps": rps, "p99": p99, "ok": ok, "us": us, "cpu_call": cpu_call,
            "cpu_ok": cpu_ok}


def start_cluster(tmp):
    """Three cluster-enabled redis-servers joined as masters; [(port, Popen)]."""
    nodes = []
    for i in range(3):
        port, bus = free_port(), free_port()
        d = os.path.join(tmp, f"cluster{i}")
        os.mkdir(d)
        p = subprocess.Popen(["redis-server", "--port", str(port), "--cluster-port", str(bus),
                              "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                              "--cluster-node-timeout", "5000", "--save", "",
                              "--appendonly", "no", "--dir", d],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodes.append((port, p))
    for port, p in nodes:
        wait_port(port, p, "redis-server (cluster)")
    subprocess.run(["redis-cli", "--cluster", "create",
                    *[f"127.0.0.1:{port}" for port, _ in nodes],
                    "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not all("cluster_state:ok" in redis_cli(port, "CLUSTER", "INFO") for port, _ in nodes):
        if time.time() > deadline:
            sys.exit("the cluster did not reach cluster_state:ok within 30 s")
        time.sleep(0.2)
    return nodes


class Sitting:
    def __init__(self, args, tmp, redis_port, redis_pid, cluster=()):
        self.args, self.tmp = args, tmp
        self.port, self.pid = redis_port, redis_pid
        self.cluster = [(port, p.pid) for port, p in cluster]
        self.cas_sha = redis_cli(redis_port, "SCRIPT", "LOAD", CAS_LUA).strip()
        self.cas_rps = {}

    def servers(self, target):
        """[(port, pid)] of the Redis `target` runs against."""
        return self.cluster if target.split("@")[0].endswith("/cluster") else [(self.port,
                                                                                   self.pid)]

    def reset(self, target):
        for port, _ in self.servers(target):
            redis_cli(port, "FLUSHALL")
            redis_cli(port, "CONFIG", "RESETSTAT")
        redis_cli(self.port, "SCRIPT", "LOAD", CAS_LUA)

    def one_run(self, target, workload):
        self.reset(target)
        servers = self.servers(target)
        c0 = sum(cpu_ticks(pid) for _, pid in servers)
        if target in CAS_KEYS:
            res = self.cas_run(target)
            if res is None:
                return run_result()
            rps, p99 = res
            ok = answered = None
        else:
            rps, p99, ok, answered = self.load_run(target, workload)
        cpu = (sum(cpu_ticks(pid) for _, pid in servers) - c0) * TICK_US
        per = [commandstats(port) for port, _ in servers]
        calls = sum(st.get("evalsha", (0, NAN))[0] for st in per)
        us = (sum(st["evalsha"][0] * st["evalsha"][1] for st in per if "evalsha" in st)
              / calls if calls else NAN)
        stats = per[0]
        if target in CAS_KEYS:
            ok = stats.get("set", (0, NAN))[0]
            answered = calls
        return run_result(rps=rps, p99=p99, ok=ok / max(answered, 1), us=us,
                          cpu_call=cpu / max(calls, 1), cpu_ok=cpu / ok if ok else NAN)

    def cas_run(self, target):
        """redis-benchmark for about --duration s; (rps, p99 µs) or None."""
        est = self.cas_rps.get(target)
        if est is None:  # redis-benchmark counts requests, not seconds
            probe = self.redis_benchmark(target, 20_000)
            if probe is None:
                return None
            est = probe[0]
            self.reset(target)
        r = self.redis_benchmark(target, max(est * self.args.duration, CONNS * PIPELINE * 4))
        if r is not None:
            self.cas_rps[target] = r[0]
        return r

    def redis_benchmark(self, target, n):
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(self.port), "-c", str(CONNS),
               "-P", str(PIPELINE), "-n", str(int(n)), "-r", str(CAS_KEYS[target]), "--csv",
               "EVALSHA", self.cas_sha, "1", "gavel-cas:__rand_int__", "__rand_int__"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=self.args.duration * 5 + 60)
        except subprocess.TimeoutExpired:
            log("  redis-benchmark took too long")
            return None
        rows = [line.replace('"', "").split(",") for line in p.stdout.splitlines()
                if line.startswith('"')]
        if p.returncode != 0 or len(rows) < 2:
            log(f"  redis-benchmark exited {p.returncode}: {p.stderr.strip()[-300:]}")
            return None
        row = dict(zip(rows[0], rows[-1]))
        try:
            return float(row["rps"]), float(row.get("p99_latency_ms", NAN)) * 1000
        except ValueError:
            return None

    def load_run(self, target, workload):
        name, _, build = target.partition("@")
        bin_dir = self.args.before_bin if build == "before" else self.args.bin_dir
        load = WORKLOADS[workload]
        url = f"redis://127.0.0.1:{self.port}"
        redis_flag = ["--redis", url]
        if name.endswith("/cluster"):
            name = name[:-len("/cluster")]
            redis_flag = ["--redis-cluster",
                          ",".join(f"redis://127.0.0.1:{port}" for port, _ in self.cluster)]
        if name == "redis":
            p, out = bench(bin_dir, self.args, CONNS,
                           ["--target", "redis", "--redis-url", url, *load], self.tmp, 0)
            p.wait()
            return read(out)
        nodes = 3 if name.startswith("gavel-3") else 1
        servers = []
        try:
            addrs = []
            for n in range(nodes):
                port = free_port()
                cmd = [os.path.join(bin_dir, "gavel-server"), "--listen", f"127.0.0.1:{port}",
                       "--store", "memory", *redis_flag, "--node-id", str(n)]
                if name.endswith("+filter"):
                    cmd += ["--outbid-filter", "true"]
                s = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                servers.append(s)
                wait_port(port, s, "gavel-server")
                addrs.append(f"127.0.0.1:{port}")
            # Split the connections over the nodes; one id base so every
            # client bids on the same auctions (the first one opens them, the
            # others find them already open with the same parameters: a
            # replay), and disjoint connection numbers so bidders and keys do
            # not collide.
            base = str(int(time.time() * 1000) % (1 << 40) << 16)
            splits = [CONNS // nodes + (1 if i < CONNS % nodes else 0) for i in range(nodes)]
            offsets = [sum(splits[:i]) for i in range(nodes)]
            procs = [bench(bin_dir, self.args, c,
                           ["--addr", a, "--id-base", base, "--conn-offset", str(o), *load],
                           self.tmp, i)
                     for i, (a, c, o) in enumerate(zip(addrs, splits, offsets))]
            results = []
            for p, out in procs:
                p.wait()
                results.append(read(out))
            return (sum(r[0] for r in results), max(r[1] for r in results),
                    sum(r[2] for r in results), sum(r[3] for r in results))
        finally:
            for s in servers:
                s.send_signal(signal.SIGTERM)
            for s in servers:
                try:
                    s.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    s.kill()


# ------------------------------------------------------------------ memory

def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Resp:
    """Just enough RESP2 to pipeline scripts and read their replies."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 20)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 20)
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v.decode()
        n = int(rest)
        return None if n < 0 else [self.read() for _ in range(n)]

    def cmd(self, *args):
        return self.pipe([enc(*args)])[0]

    def pipe(self, cmds, chunk=1000):
        out = []
        for i in range(0, len(cmds), chunk):
            self.s.sendall(b"".join(cmds[i:i + chunk]))
            out.extend(self.read() for _ in cmds[i:i + chunk])
        return out

    def used(self):
        info = self.cmd("INFO", "memory")
        return int(next(line.split(":")[1] for line in info.splitlines()
                        if line.startswith("used_memory:")))


def script(root, name):
    """A script as gavel-redis embeds it: the u64 prelude, a newline, the file."""
    with open(os.path.join(root, "lua", "u64.lua")) as f:
        prelude = f.read()
    with open(os.path.join(root, "lua", name)) as f:
        return prelude + "\n" + f.read()


def memory(root, port):
    """Bytes Redis holds for the scripts of `root`; a dict of figures."""
    r = Resp(port)
    bid_src = script(root, "bid.lua")
    open_sha = r.cmd("SCRIPT", "LOAD", script(root, "open_auction.lua"))
    bid_sha = r.cmd("SCRIPT", "LOAD", bid_src)
    per_bid_key = "KEYS[2]" in bid_src  # before the lean bid.lua
    now, window = int(time.time() * 1000), 86_400_000

    def d(v):
        return "%020d" % v

    def bid(a, bidder, amount, bid_id):
        key = f"gavel:{{a:{a}}}"
        if per_bid_key:
            return enc("EVALSHA", bid_sha, 2, key, f"{key}:bid:{bid_id}", d(bidder), d(amount),
                       d(now), window, "gavel:updates", a)
        return enc("EVALSHA", bid_sha, 1, key, d(bidder), d(amount), bid_id, d(now), window,
                   f"{bidder}|{amount}|{now}")

    def settle():
        r.cmd("MEMORY", "PURGE")
        return r.used()

    def run(cmds, want):
        for res in r.pipe(cmds):
            if not isinstance(res, list) or res[0] != want:
                sys.exit(f"memory: unexpected reply {res!r}")

    out = {}
    r.cmd("FLUSHALL")
    # 10,000 auctions with realistic ids; 20 accepted bids each (the hash
    # stays small: listpack); 20 rejected bids each.
    auctions, per = 10_000, 20
    ids = [1_763_000_000_000 + i for i in range(auctions)]
    u0 = settle()
    run([enc("EVALSHA", open_sha, 1, f"gavel:{{a:{a}}}", d(100), d(5), d(now + 3_600_000))
         for a in ids], 0)
    u1 = settle()
    out["auction"] = (u1 - u0) / auctions
    out["auction_usage"] = r.cmd("MEMORY", "USAGE", f"gavel:{{a:{ids[0]}}}", "SAMPLES", "0")
    bid_id = 1 << 40
    cmds = []
    for k in range(per):
        for j, a in enumerate(ids):
            cmds.append(bid(a, 1 + (j + k) % 5000, 1_000 + 10 * k, bid_id))
            bid_id += 1
    run(cmds, 0)
    u2 = settle()
    out["key_small"] = (u2 - u1) / (auctions * per)
    out["auction_usage_20"] = r.cmd("MEMORY", "USAGE", f"gavel:{{a:{ids[0]}}}", "SAMPLES", "0")
    cmds = []
    for k in range(per):
        for j, a in enumerate(ids):
            cmds.append(bid(a, 1 + (j + k) % 5000, 500 + k, bid_id))
            bid_id += 1
    run(cmds, 1)
    u3 = settle()
    out["rejected"] = (u3 - u2) / (auctions * per)
    # One auction taking 200,000 accepted bids (a hashtable).
    r.cmd("FLUSHALL")
    u0 = settle()
    big = 1_763_999_000_000
    run([enc("EVALSHA", open_sha, 1, f"gavel:{{a:{big}}}", d(0), d(1), d(0))], 0)
    n = 200_000
    run([bid(big, 1 + i % 5000, 1_000 + i, bid_id + i) for i in range(n)], 0)
    u1 = settle()
    out["key_big"] = (u1 - u0) / n
    r.cmd("FLUSHALL")
    return out


def print_memory(figures):
    print("\n| scripts | bytes per open auction (MEMORY USAGE of one) "
          "| per accepted key, 20 per auction (MEMORY USAGE of such an auction) "
          "| per accepted key, one auction with 200,000 | per rejected bid |")
    print("|---|---:|---:|---:|---:|")
    for name, m in figures:
        print(f"| {name} | {m['auction']:.0f} ({m['auction_usage']}) "
              f"| {m['key_small']:.0f} ({m['auction_usage_20']}) | {m['key_big']:.0f} "
              f"| {m['rejected']:.0f} |")
    print("\nused_memory deltas (after MEMORY PURGE) over 10,000 auctions, 200,000 accepted "
          "and 200,000 rejected bids, and one auction with 200,000 accepted bids; window 24 h "
          "(nothing expires during the measurement). Rejected bids are remembered only by "
          "scripts that store them.")


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
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                    help="where gavel-server and client-bench are (default: target/release)")
    ap.add_argument("--before", metavar="ROOT",
                    help="another checkout (e.g. a git worktree of the previous commit) "
                         "whose target/release binaries run alongside, as target@before")
    ap.add_argument("--before-bin", help="binaries of --before (default ROOT/target/release)")
    ap.add_argument("--no-cas", action="store_true", help="skip the redis-benchmark CAS rows")
    ap.add_argument("--memory", action="store_true",
                    help="also measure bytes per auction and per remembered key")
    ap.add_argument("--cluster", action="store_true",
                    help="also run the gavel targets against a 3-master Redis Cluster")
    args = ap.parse_args()
    need = ["redis-server", "redis-cli"] + ([] if args.no_cas else ["redis-benchmark"])
    for tool in need:
        if not shutil.which(tool):
            sys.exit(f"needs {tool} (Debian: apt-get install redis-server redis-tools)")
    if args.before and not args.before_bin:
        args.before_bin = os.path.join(args.before, "target", "release")
    for d in [args.bin_dir] + ([args.before_bin] if args.before else []):
        for b in ("gavel-server", "client-bench"):
            if not os.path.exists(os.path.join(d, b)):
                sys.exit(f"missing {d}/{b}: cargo build --release -p gavel-server -p client-bench")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}")
    gavel = ["redis"] + [t for t in args.targets.split(",") if t and t != "redis"]
    if args.cluster:
        gavel += [f"{t}/cluster" for t in gavel if t.startswith("gavel")]
    targets = [] if args.no_cas else list(CAS_KEYS)
    for t in gavel:
        targets += ([f"{t}@before"] if args.before else []) + [t]

    tmp = tempfile.mkdtemp(prefix="gavel-xnode.")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2]
    mem = []
    cluster = []
    try:
        wait_port(redis_port, redis, "redis-server")
        if args.cluster:
            cluster = start_cluster(tmp)
        sitting = Sitting(args, tmp, redis_port, redis.pid, cluster)
        rows = []
        for w in workloads:
            cells = {t: [] for t in targets}
            for r in range(args.runs):
                for t in targets:
                    res = sitting.one_run(t, w)
                    cells[t].append(res)
                    log(f"{w} run {r + 1}/{args.runs} {t}: {res['rps']:.0f} req/s, "
                        f"p99 {res['p99'] / 1000:.1f} ms, OK {res['ok']:.1%}, "
                        f"Redis {res['us']:.2f} µs/script, CPU {res['cpu_call']:.2f} µs/call, "
                        f"{res['cpu_ok']:.2f} µs/OK")
            rows.append((w, cells))
        if args.memory:
            if args.before:
                mem.append(("before", memory(args.before, redis_port)))
            mem.append(("current", memory(ROOT, redis_port)))
    finally:
        for p in [redis] + [p for _, p in cluster]:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(xs, k):
        vals = [x[k] for x in xs if x[k] == x[k]]
        return statistics.median(vals) if vals else NAN

    for w, cells in rows:
        base = med(cells["redis"], "rps")
        cas = {t: med(cells[t], "us") for t in CAS_KEYS if t in cells}
        print(f"\n### {w}\n")
        print("| target | req/s | p99 ms | OK | Redis µs/call | ×cas | ×cas-write "
              "| Redis CPU µs/call | Redis CPU µs/OK |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            c = cells[t]
            rps, us = med(c, "rps"), med(c, "us")
            ratio = "" if t in CAS_KEYS or t == "redis" else f" ({rps / base:.2f}×)"
            print(f"| {t} | {rps / 1000:.1f}k{ratio} | {med(c, 'p99') / 1000:.1f} "
                  f"| {med(c, 'ok'):.0%} | {us:.2f} "
                  f"| {us / cas.get('cas', NAN):.2f} | {us / cas.get('cas-write', NAN):.2f} "
                  f"| {med(c, 'cpu_call'):.2f} | {med(c, 'cpu_ok'):.2f} |")
    print(f"\nRedis {version}. Medians of {args.runs} run(s) of {args.duration:g} s, "
          f"{CONNS} connections × pipeline {PIPELINE} in total, targets alternating; "
          "req/s ratios to `redis` (client-bench straight to Redis) in the same sitting. "
          "Redis µs/call: EVALSHA usec_per_call from INFO commandstats (cas rows: the "
          "minimal CAS script; OK there = share of calls that wrote). Redis CPU: "
          "redis-server's utime+stime over the run, per EVALSHA and per OK outcome (cas: per "
          f"write). Targets ending /cluster: a 3-master Redis Cluster, µs per call over all "
          "masters' calls, CPU summed over the masters (their req/s ratio is still to `redis`, "
          f"one Redis alone). {os.cpu_count()} cores shared by clients, servers and Redis.")
    if mem:
        print_memory(mem)


if __name__ == "__main__":
    main()
