#!/usr/bin/env python3
"""Durable throughput, Gavel against Redis with an fsync'd AOF, in one sitting.

Targets (each Gavel run gets a fresh server and a fresh data directory or
database; Redis is FLUSHALLed, and its AOF rewritten, between runs):

  memory     gavel-server --store memory (nothing durable: the ceiling)
  sqlite     gavel-server --store sqlite:DIR/gavel.db (--ack durable, the default)
  postgres   gavel-server --store postgres://... on a throwaway PostgreSQL 15
             cluster with the stock configuration (initdb in a temp dir,
             binaries from $GAVEL_PG_BIN_DIR or /usr/lib/postgresql/15/bin, run
             as the `postgres` user through runuser when root; a fresh
             database per run)
  redis-aof  client-bench --target redis: one EVALSHA of Gavel's own Lua bid
             script per request, against redis-server --appendonly yes
             --appendfsync always (the same scripts as cross-node mode)
  redis-cas  redis-benchmark -c 100 -P 16 against the same Redis, one EVALSHA
             of a minimal compare-and-set script per request: GET the key,
             SET it to ARGV[1] if that is greater. Keys are spread over the
             same number of auctions with __rand_int__ / -r; the amounts are
             random, so once a key holds a high value most CAS fail and write
             nothing (Redis fsyncs only event-loop turns that wrote): the
             "accepted" column shows its share of writing calls (SET calls /
             EVALSHA calls from INFO commandstats) for comparison with the
             others' share of accepted bids.

Workloads (closed loop, 100 connections x pipeline 16, --duration S):

  spread   bids spread uniformly over 10,000 auctions (client-bench --auctions 10000)
  hot      bids on one auction (--auctions 1)

Open loop (client-bench --rate R, 100 connections x pipeline 16, bids over
10,000 auctions) at each of --rates for sqlite, postgres and redis-aof (those
of --targets): the achieved rate, p50 and p99 (latency from each request's
intended send time).

Each client-bench run is split in two: a setup-only run (--bids-per-conn 0,
opens the auctions at a fixed --id-base) and the measured load run
(--no-setup), so that the CPU and metric deltas below cover the load alone.

Per run, besides req/s and p99:
  CPU µs/req   user+sys CPU of the server process (/proc/PID/stat, before and
               after the load run) over requests answered: gavel-server for
               the Gavel targets (for postgres, "+pg N" adds the PostgreSQL
               cluster's processes), redis-server for the Redis targets
  B/mut        gavel_journal_bytes / committed mutations (the delta of the
               gavel_writer_batch_mutations histogram's _sum), from
               --metrics-listen, scraped before and after the load
  batch        mean mutations per journal commit (delta _sum / delta _count)
  lag max      highest gavel_materializer_lag_mutations seen (scraped every
               0.25 s during the load and once at its end)

Targets alternate within each repetition; --runs repetitions; the tables show
medians. Per-run lines go to stderr, the tables (markdown) to stdout. Client,
servers, Redis and PostgreSQL share this machine's cores; everything listens on
127.0.0.1 only, on free ports. Temp dirs honour $TMPDIR (the disk whose fsync
is measured: its fdatasync latency is probed and printed under the tables).
Every process started and every temp dir is cleaned up on exit, also on Ctrl-C.

Needs: target/release/gavel-server and client-bench (cargo build --release -p
gavel-server -p client-bench), redis-server, redis-cli, redis-benchmark,
PostgreSQL 15 server binaries for the postgres target.
"""

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
PG_BIN = os.environ.get("GAVEL_PG_BIN_DIR", "/usr/lib/postgresql/15/bin")

WORKLOADS = {
    "spread": 10000,  # auctions
    "hot": 1,
}
TARGETS = ["memory", "sqlite", "postgres", "redis-aof", "redis-cas"]
GAVEL_TARGETS = ("memory", "sqlite", "postgres")
OPEN_TARGETS = ("sqlite", "postgres", "redis-aof")
CONNS = 100
PIPELINE = 16
ID_BASE = 1 << 20  # every Gavel run has a fresh store; Redis is flushed

# GET, compare with ARGV, SET if greater: the least a durable bid can be.
CAS_LUA = ('local c = tonumber(redis.call("GET", KEYS[1]) or "-1") '
           'local b = tonumber(ARGV[1]) '
           'if b > c then redis.call("SET", KEYS[1], ARGV[1]) return 1 end '
           'return 0')

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
NAN = float("nan")
LIVE = []  # Popen objects still to stop on the way out


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Keys must not run out within a run: with --store memory a shard past its
# share of the server's default --idempotency-max-keys (2M) answers new bids
# BUSY, which a 5 s memory run reaches. A --server-arg overrides this.
os.environ.setdefault("GAVEL_IDEMPOTENCY_MAX_KEYS", "40000000")


def spawn(cmd, **kw):
    """Starts a child in its own session (Ctrl-C reaches only this script,
    which then stops the children in order) and remembers it for cleanup."""
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    LIVE.append(p)
    return p


def stop(p, timeout=15):
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in LIVE:
        LIVE.remove(p)


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


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- CPU, metrics

def proc_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in ticks, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def cpu_ticks(pid):
    st = proc_stat(pid)
    return st[1] if st else NAN


def tree_cpu_ticks(root):
    """CPU of a process and all its live descendants, plus what its reaped
    children used (cutime+cstime): PostgreSQL's postmaster and backends."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                parents[int(d)] = st
    if root not in parents:
        return NAN
    total, todo, seen = parents[root][2], [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += parents[pid][1]
        todo.extend(c for c, st in parents.items() if st[0] == pid)
    return total


def scrape(addr):
    """The server's metrics as {name-with-labels: value}; {} on failure."""
    out = {}
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


class LagPoller(threading.Thread):
    """Highest gavel_materializer_lag_mutations seen while the load runs."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr, self.max, self.halt = addr, NAN, threading.Event()

    def see(self, m):
        v = m.get("gavel_materializer_lag_mutations")
        if v is not None and not (v <= self.max):  # also replaces NaN
            self.max = v

    def run(self):
        while not self.halt.wait(0.25):
            self.see(scrape(self.addr))


def store_metrics(m0, m1):
    """(journal bytes per committed mutation, mean batch) between two scrapes."""
    def d(k):
        return m1.get(k, NAN) - m0.get(k, 0.0)
    muts = d("gavel_writer_batch_mutations_sum")
    commits = d("gavel_writer_batch_mutations_count")
    jb = d("gavel_journal_bytes_total")
    per = jb / muts if muts and muts > 0 else NAN
    batch = muts / commits if commits and commits > 0 else NAN
    return per, batch


# ------------------------------------------------------------------ services

class Postgres:
    """A throwaway PostgreSQL cluster, stock configuration, loopback only."""

    def __init__(self):
        if not os.path.exists(os.path.join(PG_BIN, "postgres")):
            sys.exit(f"PostgreSQL server binaries not found in {PG_BIN} (set GAVEL_PG_BIN_DIR, "
                     "or apt-get install -y postgresql-15); or leave postgres out of --targets")
        self.dir = tempfile.mkdtemp(prefix="gavel-durable-pg.")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.started = False
        self.root = os.getuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.seq = 0

    def as_pg(self, cmd):
        return (["runuser", "-u", "postgres", "--"] if self.root else []) + cmd

    def start(self):
        log_file = os.path.join(self.dir, "initdb.log")
        with open(log_file, "w") as lf:
            rc = subprocess.run(self.as_pg([os.path.join(PG_BIN, "initdb"), "-D", self.data,
                                            "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
                                stdout=lf, stderr=subprocess.STDOUT,
                                start_new_session=True).returncode
        if rc:
            sys.exit(f"initdb failed:\n{tail(log_file)}")
        self.started = True  # from here on, cleanup tries pg_ctl stop
        pglog = os.path.join(self.dir, "postgres.log")
        rc = subprocess.run(self.as_pg([
            os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", pglog, "-w", "-t", "60",
            "-o", f"-p {self.port} -k '{self.dir}' -c listen_addresses=127.0.0.1", "start"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True).returncode
        if rc:
            sys.exit(f"PostgreSQL did not start:\n{tail(pglog)}")

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def cpu_ticks(self):
        pid = self.postmaster_pid()
        return tree_cpu_ticks(pid) if pid else NAN

    def psql(self, sql):
        subprocess.run([os.path.join(PG_BIN, "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "-d", "postgres", "-qAtc", sql],
                       check=True, stdout=subprocess.DEVNULL, start_new_session=True,
                       env=dict(os.environ, PGOPTIONS="-c client_min_messages=warning"))

    def fresh_db(self):
        self.seq += 1
        name = f"gavel_bench_{self.seq}"
        self.psql(f"DROP DATABASE IF EXISTS {name}")
        self.psql(f"CREATE DATABASE {name}")
        return name, f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def drop_db(self, name):
        try:
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except subprocess.CalledProcessError:
            log(f"  note: could not drop database {name}")

    def close(self):
        if self.started:
            subprocess.run(self.as_pg([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data,
                                       "-m", "fast", "-w", "-t", "30", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
            pid = self.postmaster_pid()
            if pid and proc_stat(pid):
                try:
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown
                except OSError:
                    pass
                time.sleep(1)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """redis-server with every write fsync'd before it is answered."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "redis")
        os.mkdir(self.dir)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                           "--dir", self.dir],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "redis-server")
        # with --appendonly at start, Redis writes its first base file in the background
        self.wait_rewrite()

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], check=True,
                              capture_output=True, text=True).stdout

    def info(self, section):
        out = {}
        for line in self.cli("INFO", section).splitlines():
            k, sep, v = line.strip().partition(":")
            if sep:
                out[k] = v
        return out

    def wait_rewrite(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            i = self.info("persistence")
            if i.get("aof_rewrite_in_progress") == "0" and i.get("aof_rewrite_scheduled") == "0":
                return
            time.sleep(0.05)
        log("  note: Redis AOF rewrite still running after 30 s")

    def reset(self):
        """Empty data set, a compacted AOF, zeroed command stats."""
        self.cli("FLUSHALL")
        self.wait_rewrite()
        self.cli("BGREWRITEAOF")
        time.sleep(0.05)
        self.wait_rewrite()
        self.cli("CONFIG", "RESETSTAT")

    def calls(self):
        """{command: calls} since the last CONFIG RESETSTAT."""
        out = {}
        for k, v in self.info("commandstats").items():
            if k.startswith("cmdstat_"):
                for field in v.split(","):
                    name, _, n = field.partition("=")
                    if name == "calls":
                        out[k[len("cmdstat_"):]] = int(n)
        return out

    def cpu_ticks(self):
        return cpu_ticks(self.proc.pid)

    def close(self):
        stop(self.proc)


# --------------------------------------------------------------------- runs

def result(rps=NAN, p50=NAN, p99=NAN, ok=NAN, cpu=NAN, cpu_pg=NAN, bpm=NAN, batch=NAN, lag=NAN):
    """One run's numbers; latencies in µs, cpu in µs per answered request."""
    return dict(rps=rps, p50=p50, p99=p99, ok=ok, cpu=cpu, cpu_pg=cpu_pg,
                bpm=bpm, batch=batch, lag=lag)


def client_bench(args, rundir, tag, conn_args, auctions, load, rate=None):
    """Runs client-bench once; load=False: setup only. Returns the JSON dict
    or None (after printing why)."""
    out = os.path.join(rundir, f"{tag}.json")
    err = os.path.join(rundir, f"{tag}.stderr")
    cmd = [os.path.join(BIN, "client-bench"), "--no-progress", "--json", out,
           *conn_args, "--auctions", str(auctions), "--id-base", str(ID_BASE)]
    if load:
        cmd += ["--no-setup", "--connections", str(CONNS), "--pipeline", str(PIPELINE),
                "--duration", str(args.duration)]
        if rate:
            cmd += ["--rate", str(rate)]
    else:
        cmd += ["--connections", "1", "--bids-per-conn", "0"]
    with open(err, "w") as ef:
        p = spawn(cmd, stdout=subprocess.DEVNULL, stderr=ef)
        try:
            rc = p.wait(timeout=args.duration * 4 + 120)
        except subprocess.TimeoutExpired:
            log(f"  client-bench ({tag}) hung; killed")
            p.kill()
            p.wait()
            rc = -9
        finally:
            if p in LIVE:
                LIVE.remove(p)
    if rc != 0:
        log(f"  client-bench ({tag}) exited {rc}:\n{tail(err)}")
        return None
    try:
        with open(out) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        log(f"  client-bench ({tag}) wrote no JSON: {e}")
        return None
    if d.get("failed", 0) or d.get("lost", 0):
        log(f"  note: {d.get('failed', 0)} requests answered ERROR {d.get('errors')}, "
            f"{d.get('lost', 0)} lost")
    return d


def bench_numbers(d):
    answered = d.get("succeeded", 0) + d.get("failed", 0)
    ok = d.get("outcomes", {}).get("OK", 0) / max(d.get("succeeded", 0), 1)
    return answered, dict(rps=d["rps"], p50=d["p50_us"], p99=d["p99_us"], ok=ok)


def wait_line(path, prefix, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if line.startswith(prefix):
                        return line[len(prefix):].strip()
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited (status {proc.returncode}) before printing "
                               f"`{prefix.strip()}`")
        time.sleep(0.05)
    raise RuntimeError(f"{what} printed no `{prefix.strip()}` within {timeout} s")


def gavel_run(args, ctx, target, auctions, rate=None):
    rundir = tempfile.mkdtemp(prefix=f"{target}.", dir=ctx["tmp"])
    db = None
    server = None
    try:
        if target == "memory":
            store = "memory"
        elif target == "sqlite":
            store = f"sqlite:{os.path.join(rundir, 'gavel.db')}"
        else:
            db, store = ctx["pg"].fresh_db()
        out, err = os.path.join(rundir, "server.out"), os.path.join(rundir, "server.err")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        with open(out, "w") as of, open(err, "w") as ef:
            server = spawn([os.path.join(BIN, "gavel-server"), "--listen", "127.0.0.1:0",
                            "--store", store, "--metrics-listen", "127.0.0.1:0",
                            *args.server_arg],
                           stdout=of, stderr=ef, env=env)
        try:
            addr = wait_line(out, "listening on ", server, "gavel-server")
            maddr = wait_line(err, "metrics on ", server, "gavel-server")
        except RuntimeError as e:
            log(f"  {e}:\n{tail(err)}")
            return result()
        conn = ["--addr", addr]
        if client_bench(args, rundir, "setup", conn, auctions, load=False) is None:
            return result()
        m0 = scrape(maddr)
        c0 = cpu_ticks(server.pid)
        pg0 = ctx["pg"].cpu_ticks() if db else NAN
        poller = LagPoller(maddr)
        poller.start()
        d = client_bench(args, rundir, "load", conn, auctions, load=True, rate=rate)
        c1 = cpu_ticks(server.pid)
        pg1 = ctx["pg"].cpu_ticks() if db else NAN
        poller.halt.set()
        poller.join()
        m1 = scrape(maddr)
        poller.see(m1)
        if d is None:
            return result()
        answered, r = bench_numbers(d)
        bpm, batch = store_metrics(m0, m1) if m1 else (NAN, NAN)
        n = max(answered, 1)
        return result(**r, cpu=(c1 - c0) * TICK_US / n, cpu_pg=(pg1 - pg0) * TICK_US / n,
                      bpm=bpm, batch=batch, lag=poller.max if m1 else NAN)
    finally:
        if server is not None:
            stop(server)
            if server.returncode not in (0, -signal.SIGTERM):
                log(f"  note: gavel-server exited {server.returncode}:\n"
                    f"{tail(os.path.join(rundir, 'server.err'))}")
        if db:
            ctx["pg"].drop_db(db)
        shutil.rmtree(rundir, ignore_errors=True)


def redis_aof_run(args, ctx, auctions, rate=None):
    redis = ctx["redis"]
    rundir = tempfile.mkdtemp(prefix="redis-aof.", dir=ctx["tmp"])
    try:
        redis.reset()
        conn = ["--target", "redis", "--redis-url", redis.url]
        if client_bench(args, rundir, "setup", conn, auctions, load=False) is None:
            return result()
        redis.cli("CONFIG", "RESETSTAT")
        c0 = redis.cpu_ticks()
        d = client_bench(args, rundir, "load", conn, auctions, load=True, rate=rate)
        c1 = redis.cpu_ticks()
        if d is None:
            return result()
        answered, r = bench_numbers(d)
        return result(**r, cpu=(c1 - c0) * TICK_US / max(answered, 1))
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def redis_benchmark(args, redis, sha, auctions, n):
    """One redis-benchmark run of the CAS script; (rps, p50 µs, p99 µs) or None."""
    if auctions == 1:
        # one key; -r then only randomises the amount
        key, space = "gavel-cas:0", 1_000_000_000
    else:
        # key and amount are drawn independently, both below -r
        key, space = "gavel-cas:__rand_int__", auctions
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis.port), "-c", str(CONNS),
           "-P", str(PIPELINE), "-n", str(int(n)), "-r", str(space), "--csv",
           "EVALSHA", sha, "1", key, "__rand_int__"]
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=args.duration * 5 + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        log("  redis-benchmark took too long; killed")
        return None
    finally:
        if p in LIVE:
            LIVE.remove(p)
    rows = list(csv.reader(line for line in out.splitlines() if line.startswith('"')))
    if p.returncode != 0 or len(rows) < 2:
        log(f"  redis-benchmark exited {p.returncode}: {err.strip()[-500:]}")
        return None
    row = dict(zip(rows[0], rows[-1]))
    try:
        rps = float(row["rps"])
    except (KeyError, ValueError):
        log(f"  cannot read redis-benchmark's CSV: {rows}")
        return None

    def ms(k):
        try:
            return float(row[k]) * 1000
        except (KeyError, ValueError):
            return NAN
    return rps, ms("p50_latency_ms"), ms("p99_latency_ms")


def redis_cas_run(args, ctx, workload, auctions):
    redis = ctx["redis"]
    redis.reset()
    sha = redis.cli("SCRIPT", "LOAD", CAS_LUA).strip()
    est = ctx["cas_rps"].get(workload)
    if est is None:  # calibrate -n: redis-benchmark counts requests, not seconds
        probe = redis_benchmark(args, redis, sha, auctions, 20000)
        if probe is None:
            return result()
        est = probe[0]
        redis.reset()
        redis.cli("SCRIPT", "LOAD", CAS_LUA)
    n = max(est * args.duration, CONNS * PIPELINE * 4)
    c0 = redis.cpu_ticks()
    r = redis_benchmark(args, redis, sha, auctions, n)
    c1 = redis.cpu_ticks()
    if r is None:
        return result()
    ctx["cas_rps"][workload] = r[0]
    calls = redis.calls()
    evals = calls.get("evalsha", 0)
    writes = calls.get("set", 0) / evals if evals else NAN
    return result(rps=r[0], p50=r[1], p99=r[2], ok=writes,
                  cpu=(c1 - c0) * TICK_US / max(evals, 1))


def one_run(args, ctx, target, workload, rate=None):
    auctions = WORKLOADS[workload]
    if target in GAVEL_TARGETS:
        return gavel_run(args, ctx, target, auctions, rate)
    if target == "redis-aof":
        return redis_aof_run(args, ctx, auctions, rate)
    return redis_cas_run(args, ctx, workload, auctions)


# ------------------------------------------------------------------- output

def fsync_probe(directory, n=200):
    """Median and p99 of a 4 KiB write + fdatasync in directory, µs."""
    path = os.path.join(directory, "fsync-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"x" * 4096
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def run_line(t, res):
    """One run's numbers for stderr."""
    s = (f"{res['rps']:.0f} req/s, p50 {res['p50'] / 1000:.2f} ms, p99 {res['p99'] / 1000:.1f} ms, "
         f"{'writes' if t == 'redis-cas' else 'accepted'} {res['ok']:.1%}, CPU {res['cpu']:.1f}")
    if t == "postgres":
        s += f" +pg {res['cpu_pg']:.1f}"
    s += " µs/req"
    if t in GAVEL_TARGETS and t != "memory":
        s += (f", {res['bpm']:.0f} B/mut, batch {res['batch']:.0f}, "
              f"lag max {res['lag']:.0f}")
    return s


def med(runs, k):
    xs = [r[k] for r in runs if r[k] == r[k]]  # drop NaN (failed runs)
    return statistics.median(xs) if xs else NAN


def fmt(x, spec, suffix=""):
    return "–" if x != x else f"{x:{spec}}{suffix}"


def ratio(a, b):
    return "–" if a != a or b != b or not b else f"{a / b:.2f}×"


def print_tables(args, targets, closed, open_rows, fsync):
    print()
    print(f"Closed loop: {CONNS} connections × pipeline {PIPELINE}, medians of {args.runs} "
          f"run(s) of {args.duration:g} s\n")
    print("| workload | target | req/s | p99 ms | accepted | ×redis-cas | ×redis-aof | ×memory "
          "| CPU µs/req | B/mut | batch | lag max |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w, cells in closed:
        base = {t: med(cells[t], "rps") if t in cells else NAN
                for t in ("redis-cas", "redis-aof", "memory")}
        for t in targets:
            c = cells[t]
            rps = med(c, "rps")
            cpu = fmt(med(c, "cpu"), ".1f")
            if t == "postgres":
                cpu += f" (+pg {fmt(med(c, 'cpu_pg'), '.1f')})"
            print(f"| {w} | {t} | {fmt(rps, ',.0f')} | {fmt(med(c, 'p99') / 1000, '.1f')} "
                  f"| {fmt(med(c, 'ok') * 100, '.0f', '%')} "
                  f"| {'' if t == 'redis-cas' else ratio(rps, base['redis-cas'])} "
                  f"| {'' if t == 'redis-aof' else ratio(rps, base['redis-aof'])} "
                  f"| {'' if t == 'memory' else ratio(rps, base['memory'])} "
                  f"| {cpu} | {fmt(med(c, 'bpm'), '.0f')} | {fmt(med(c, 'batch'), '.0f')} "
                  f"| {fmt(med(c, 'lag'), ',.0f')} |")
    if open_rows:
        print()
        print(f"Open loop: {CONNS} connections × pipeline {PIPELINE}, bids over "
              f"{WORKLOADS['spread']:,} auctions, medians of {args.runs} run(s) of "
              f"{args.duration:g} s\n")
        print("| target rate | target | achieved req/s | p50 ms | p99 ms | CPU µs/req "
              "| batch | lag max |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for rate, cells in open_rows:
            for t, c in cells.items():
                cpu = fmt(med(c, "cpu"), ".1f")
                if t == "postgres":
                    cpu += f" (+pg {fmt(med(c, 'cpu_pg'), '.1f')})"
                print(f"| {rate:,} | {t} | {fmt(med(c, 'rps'), ',.0f')} "
                      f"| {fmt(med(c, 'p50') / 1000, '.2f')} | {fmt(med(c, 'p99') / 1000, '.2f')} "
                      f"| {cpu} | {fmt(med(c, 'batch'), '.0f')} | {fmt(med(c, 'lag'), ',.0f')} |")
    print()
    print("accepted: share of bids answered OK (redis-cas: share of calls that wrote, SET/EVALSHA). "
          "CPU µs/req: the server process's user+sys CPU over requests answered (gavel-server; "
          "+pg: the PostgreSQL cluster's; redis-server for the Redis rows). B/mut: journal "
          "bytes per committed mutation; batch: mean mutations per journal commit; lag max: "
          "highest materializer lag (mutations) seen. "
          f"{os.cpu_count()} cores shared by client and servers; data under "
          f"{tempfile.gettempdir()}, 4 KiB write+fdatasync there: p50 {fsync[0]:.0f} µs, "
          f"p99 {fsync[1]:.0f} µs.")


# --------------------------------------------------------------------- main

def check_binaries():
    for b in ("gavel-server", "client-bench"):
        if not os.path.exists(os.path.join(BIN, b)):
            sys.exit(f"missing {BIN}/{b}: cargo build --release -p gavel-server -p client-bench")
    built = min(os.path.getmtime(os.path.join(BIN, b)) for b in ("gavel-server", "client-bench"))
    # what goes into the two binaries: the crates' src, manifests, Lua, SQL
    paths = [os.path.join(ROOT, f) for f in ("Cargo.toml", "Cargo.lock", "schema.sql")]
    for crate in ("server", "client-bench", "protocol", "redis-store"):
        paths.append(os.path.join(ROOT, crate, "Cargo.toml"))
        for dirpath, _, files in os.walk(os.path.join(ROOT, crate, "src")):
            paths += [os.path.join(dirpath, f) for f in files]
    for dirpath, _, files in os.walk(os.path.join(ROOT, "lua")):
        paths += [os.path.join(dirpath, f) for f in files if f.endswith(".lua")]
    newest = max((os.path.getmtime(p) for p in paths if os.path.exists(p)), default=0.0)
    if newest > built:
        log("warning: sources are newer than target/release binaries "
            "(cargo build --release -p gavel-server -p client-bench)")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per cell; medians reported "
                    "(default 3)")
    ap.add_argument("--duration", type=float, default=5, help="seconds of load per run "
                    "(default 5)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="comma-separated subset of: " + ", ".join(TARGETS) + " (default all)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="closed-loop workloads, comma-separated subset of: spread (10,000 "
                         "auctions), hot (1 auction); empty for none (default both)")
    ap.add_argument("--rates", default="5000,10000",
                    help="open-loop target rates in req/s, comma-separated, run for those of "
                         "--targets among sqlite, postgres, redis-aof; empty for none "
                         "(default 5000,10000)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: --runs 1 --duration 2")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="an extra gavel-server argument, appended to the command line of "
                         "every Gavel target's server (repeatable; write values that start "
                         "with '-' as --server-arg=ARG), e.g. --server-arg=--idempotency-max-keys "
                         "--server-arg=100000")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 2.0
    if args.runs < 1 or args.duration <= 0:
        sys.exit("--runs must be >= 1 and --duration > 0")
    targets = [t for t in args.targets.split(",") if t]
    workloads = [w for w in args.workloads.split(",") if w]
    for t in targets:
        if t not in TARGETS:
            sys.exit(f"unknown target {t} (known: {', '.join(TARGETS)})")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w} (known: {', '.join(WORKLOADS)})")
    try:
        rates = [int(float(r)) for r in args.rates.split(",") if r]
    except ValueError:
        sys.exit(f"--rates: not a list of numbers: {args.rates}")
    open_targets = [t for t in targets if t in OPEN_TARGETS] if rates else []
    need = {"redis-server", "redis-cli"} if any(t.startswith("redis") for t in targets) else set()
    if "redis-cas" in targets:
        need.add("redis-benchmark")
    for tool in sorted(need):
        if not shutil.which(tool):
            sys.exit(f"needs {tool} (Debian: apt-get install redis-server redis-tools)")
    check_binaries()

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    tmp = tempfile.mkdtemp(prefix="gavel-durable.")
    ctx = {"tmp": tmp, "pg": None, "redis": None, "cas_rps": {}}
    closed, open_rows = [], []
    interrupted = False
    try:
        fsync = fsync_probe(tmp)
        log(f"fdatasync of 4 KiB in {tempfile.gettempdir()}: p50 {fsync[0]:.0f} µs, "
            f"p99 {fsync[1]:.0f} µs")
        if "postgres" in targets:
            ctx["pg"] = Postgres()
            ctx["pg"].start()
            log(f"PostgreSQL on 127.0.0.1:{ctx['pg'].port} (stock config, {ctx['pg'].dir})")
        if need:
            ctx["redis"] = Redis(tmp)
            log(f"redis-server (AOF, appendfsync always) on 127.0.0.1:{ctx['redis'].port}")
        for w in workloads:
            cells = {t: [] for t in targets}
            for r in range(args.runs):
                for t in targets:
                    res = one_run(args, ctx, t, w)
                    cells[t].append(res)
                    log(f"{w} run {r + 1}/{args.runs} {t}: {run_line(t, res)}")
            closed.append((w, cells))
        for rate in rates:
            cells = {t: [] for t in open_targets}
            for r in range(args.runs):
                for t in open_targets:
                    res = one_run(args, ctx, t, "spread", rate)
                    cells[t].append(res)
                    log(f"open {rate}/s run {r + 1}/{args.runs} {t}: {run_line(t, res)}")
            if cells:
                open_rows.append((rate, cells))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in list(LIVE):
            stop(p, timeout=10)
        if ctx["pg"]:
            ctx["pg"].close()
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted:
        sys.exit(130)
    print_tables(args, targets, closed, open_rows, fsync)


if __name__ == "__main__":
    main()
