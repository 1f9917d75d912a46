#!/usr/bin/env bash
# Gavel's standard benchmark matrix; prints a markdown table.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/bench.sh [--quick] [--runs N] [--duration S] [--auctions N]
                        [--rows LIST] [--server-arg ARG]... [--bin-dir DIR]

Runs each scenario N times (default 3; medians reported) against a fresh
gavel-server (and, for the baseline, Redis alone through client-bench
--target redis), then prints a markdown table:

  a  1,000 connections, 3 ms connect pacing, 50 bids each 10 ms apart
  b  100 connections x pipeline 1, --store memory, 5 s
  c  100 connections x pipeline 16, --store memory, 5 s
  d  durable SQLite and durable PostgreSQL, 100 x 16
  e  Redis alone (same Lua scripts, EVALSHA per request) for a-c
  f  Gavel in front of Redis (gavel-server --redis), 100 x 16

  --quick         1 run each, 2 s durations (smoke test)
  --auctions N    auctions the bids spread over (client-bench --auctions;
                  default 1: every row bids on one hot auction, so one shard
                  does all the work); e.g. --auctions 10000
  --rows LIST     only these rows, comma-separated letters of a,b,c,d,f
                  (default all; the Redis column of d and f is row c's,
                  n/a unless c runs too)
  --server-arg A  append A to every gavel-server command line (repeatable),
                  e.g. --server-arg --idempotency-max-keys=20000000
                  Every row runs with GAVEL_IDEMPOTENCY_MAX_KEYS=40000000
                  unless the environment sets it: with --store memory a
                  shard past its share of the server's default cap (2M)
                  answers new bids BUSY, which a 5 s run at 400k+ bids/s
                  reaches — the rows measure the server, not that cap
  --bin-dir DIR   where gavel-server and client-bench are (default
                  target/release, built if missing; env BENCH_BIN)

Beside throughput and p99, each row shows the server's CPU per request:
user+sys CPU of the server process (all threads; /proc/PID/stat utime+stime
in `getconf CLK_TCK` ticks) from just before client-bench starts until it
exits, divided by the requests answered (RESULT or ERROR), in µs. For the
Redis column that is redis-server's CPU (found by INFO process_id); for row
(f) it is gavel-server's, with Redis's own CPU shown after a "+". The window
includes client-bench's short setup phase (opening the auctions), not
counted as requests. ERROR answers (BUSY above all) are cheap, so a row
whose success rate shows below 100% understates what a RESULT costs. The
client shares the machine: that lowers throughput but is not counted in
the server's CPU.

The servers listen on 127.0.0.1:$BENCH_PORT (default 47173; if a start
fails with "Address already in use", an outgoing connection may hold it:
pick a port below /proc/sys/net/ipv4/ip_local_port_range).

PostgreSQL and Redis come from scripts/services.sh (started here if not up,
and stopped again at the end if this script started them). Rows whose
service is unavailable print n/a. Needs python3.
USAGE
}

RUNS=3
DUR=5
AUCTIONS=1
ROWS=a,b,c,d,f
SERVER_ARGS=()
# See --server-arg in the usage: keys must not run out within a run.
export GAVEL_IDEMPOTENCY_MAX_KEYS=${GAVEL_IDEMPOTENCY_MAX_KEYS:-40000000}
BIN=${BENCH_BIN:-}
while [ $# -gt 0 ]; do
  case $1 in
    --quick) RUNS=1; DUR=2 ;;
    --runs) RUNS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --auctions) AUCTIONS=$2; shift ;;
    --rows) ROWS=$2; shift ;;
    --server-arg) SERVER_ARGS+=("$2"); shift ;;
    --bin-dir) BIN=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 1 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/gavel-bench.XXXXXX)
PORT=${BENCH_PORT:-47173}
SERVER_PID=
STARTED_SERVICES=0

cleanup() {
  stop_server
  if [ "$STARTED_SERVICES" = 1 ]; then "$ROOT/scripts/services.sh" down >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$BIN/gavel-server" ] || [ ! -x "$BIN/client-bench" ]; then
  if [ "$BIN" != "$ROOT/target/release" ]; then
    echo "no gavel-server/client-bench in $BIN" >&2
    exit 1
  fi
  echo "building release binaries..." >&2
  (cd "$ROOT" && cargo build --release -p gavel-server -p client-bench >&2)
fi

# Services (PostgreSQL, Redis).
if ! "$ROOT/scripts/services.sh" status >/dev/null 2>&1; then
  if "$ROOT/scripts/services.sh" up >"$WORK/services.out" 2>&1; then
    STARTED_SERVICES=1
  else
    echo "warning: scripts/services.sh up failed; PostgreSQL/Redis rows may be n/a" >&2
    cat "$WORK/services.out" >&2
  fi
fi
PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
PG_URL=${GAVEL_TEST_PG_URL:-postgres://postgres@127.0.0.1:$PG_PORT/gavel}
REDIS_URL=${GAVEL_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}
have_pg() { /usr/lib/postgresql/15/bin/pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }
have_redis() { redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
redis_pid() { redis-cli -p "$REDIS_PORT" info server 2>/dev/null | sed -n 's/^process_id:\([0-9]*\).*/\1/p'; }

# utime+stime of a process (all its threads), in clock ticks; "nan" if gone.
cpu_ticks() {
  local s
  [ -n "${1:-}" ] && s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo nan; return; }
  s=${s##*) }  # fields from 3 (state) on; comm may hold spaces
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}
HAVE_REDIS_FLAG=0
if "$BIN/gavel-server" --help 2>/dev/null | grep -q -- '--redis '; then HAVE_REDIS_FLAG=1; fi
if "$BIN/gavel-server" --help 2>/dev/null | grep -q -- '--redis <'; then HAVE_REDIS_FLAG=1; fi

fresh_pg_db() {
  # A fresh database per run.
  local psql=(psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
  "${psql[@]}" -c "DROP DATABASE IF EXISTS gavel_bench" -c "CREATE DATABASE gavel_bench" >/dev/null 2>&1
}

start_server() { # args: server flags
  stop_server
  "$BIN/gavel-server" --listen "127.0.0.1:$PORT" "$@" ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} >"$WORK/server.out" 2>"$WORK/server.err" &
  SERVER_PID=$!
  local i
  for i in $(seq 100); do
    grep -q listening "$WORK/server.out" "$WORK/server.err" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "gavel-server $* did not start:" >&2
  cat "$WORK/server.err" >&2
  SERVER_PID=
  return 1
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}

# Workload flags per scenario.
load_flags() {
  case $1 in
    a) echo "--connections 1000 --connect-pacing-ms 3 --bids-per-conn 50 --interval-ms 10" ;;
    b) echo "--connections 100 --pipeline 1 --duration $DUR" ;;
    c) echo "--connections 100 --pipeline 16 --duration $DUR" ;;
  esac | sed "s/\$/ --auctions $AUCTIONS/"
}

# One client run; appends "rps p99_us success_rate cpu_us cpu2_us" to $1
# (nan where unknown): cpu_us is the CPU per answered request of process
# $2, cpu2_us that of process $3 ("-" for none).
one_run() { # args: outfile pid pid2 client-args...
  local out=$1 pid=$2 pid2=$3; shift 3
  local json=$WORK/r.json
  rm -f "$json"
  local c0 c0b c1 c1b
  c0=$(cpu_ticks "$pid"); c0b=$(cpu_ticks "${pid2#-}")
  # shellcheck disable=SC2068
  "$BIN/client-bench" --no-progress --json "$json" "$@" >"$WORK/client.out" 2>"$WORK/client.err" || true
  c1=$(cpu_ticks "$pid"); c1b=$(cpu_ticks "${pid2#-}")
  python3 - "$json" "$CLK_TCK" "$c0" "$c1" "$c0b" "$c1b" >>"$out" <<'PY'
import json, sys
hz = float(sys.argv[2])
def per_req(t0, t1, n):
    if "nan" in (t0, t1) or n <= 0:
        return "nan"
    return str((float(t1) - float(t0)) / hz * 1e6 / n)
try:
    d = json.load(open(sys.argv[1]))
    n = d.get("succeeded", 0) + d.get("failed", 0)
    print(d["rps"], d["p99_us"], d.get("success_rate", "nan"),
          per_req(sys.argv[3], sys.argv[4], n), per_req(sys.argv[5], sys.argv[6], n))
except Exception:
    print("nan nan nan nan nan")
PY
}

# Runs a Gavel scenario RUNS times; server flags given, fresh server per run.
gavel_cell() { # args: outfile scenario server-flags...
  local out=$1 sc=$2; shift 2
  : >"$out"
  local r
  for r in $(seq "$RUNS"); do
    rm -rf "$WORK/db"; mkdir -p "$WORK/db"
    local flags=()
    local f
    for f in "$@"; do flags+=("${f//@DB@/$WORK/db}"); done
    if [[ " ${flags[*]} " == *"postgres://"* ]]; then fresh_pg_db || { echo "nan nan nan nan nan" >>"$out"; continue; }; fi
    # Gavel in front of Redis: Redis's CPU is counted too (second figure).
    local pid2=-
    if [[ " ${flags[*]} " == *" --redis "* ]]; then pid2=$(redis_pid); pid2=${pid2:--}; fi
    if start_server "${flags[@]}"; then
      # shellcheck disable=SC2046
      one_run "$out" "$SERVER_PID" "$pid2" --addr "127.0.0.1:$PORT" $(load_flags "$sc")
    else
      echo "nan nan nan nan nan" >>"$out"
    fi
    stop_server
  done
}

redis_cell() { # args: outfile scenario
  local out=$1 sc=$2
  : >"$out"
  local r
  for r in $(seq "$RUNS"); do
    redis-cli -p "$REDIS_PORT" flushall >/dev/null 2>&1 || true
    # shellcheck disable=SC2046
    one_run "$out" "$(redis_pid)" - --target redis --redis-url "$REDIS_URL" $(load_flags "$sc")
  done
}

na_cell() { echo "nan nan nan nan nan" >"$1"; }

# Median of each column; prints "rps p99_us success_rate cpu_us cpu2_us".
median() {
  python3 - "$1" <<'PY'
import math, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
out = []
for c in range(5):
    v = sorted(float(r[c]) for r in rows if r[c] != "nan")
    out.append(str(v[len(v) // 2]) if v else "nan")
print(" ".join(out))
PY
}

declare -a NAMES=()
declare -A GCELL=() RCELL=()
row() { NAMES+=("$1"); GCELL[$1]=$2; RCELL[$1]=$3; }

echo "# bench.sh: $RUNS run(s) each, ${DUR}s, --auctions $AUCTIONS, rows $ROWS${SERVER_ARGS[*]+, server args ${SERVER_ARGS[*]}}; load: $(uptime | sed 's/.*load/load/')" >&2
want() { [[ ",$ROWS," == *",$1,"* ]]; }
na_cell "$WORK/r_c"

if want a; then
echo "(a) 1000 conns paced, memory" >&2
gavel_cell "$WORK/g_a" a --store memory
if have_redis; then redis_cell "$WORK/r_a" a; else na_cell "$WORK/r_a"; fi
row "(a) 1000 conn × 50 bids, 3 ms pacing, 10 ms apart" "$WORK/g_a" "$WORK/r_a"
fi

if want b; then
echo "(b) 100x1 memory" >&2
gavel_cell "$WORK/g_b" b --store memory
if have_redis; then redis_cell "$WORK/r_b" b; else na_cell "$WORK/r_b"; fi
row "(b) 100 × pipeline 1, memory" "$WORK/g_b" "$WORK/r_b"
fi

if want c; then
echo "(c) 100x16 memory" >&2
gavel_cell "$WORK/g_c" c --store memory
if have_redis; then redis_cell "$WORK/r_c" c; else na_cell "$WORK/r_c"; fi
row "(c) 100 × pipeline 16, memory" "$WORK/g_c" "$WORK/r_c"
fi

if want d; then
echo "(d) durable sqlite / postgres" >&2
gavel_cell "$WORK/g_ds" c --store "sqlite:@DB@/g.db"
na_cell "$WORK/r_ds"
row "(d) 100 × 16, durable SQLite" "$WORK/g_ds" "$WORK/r_c"
if have_pg; then
  gavel_cell "$WORK/g_dp" c --store "postgres://postgres@127.0.0.1:$PG_PORT/gavel_bench"
else
  na_cell "$WORK/g_dp"
fi
row "(d) 100 × 16, durable PostgreSQL" "$WORK/g_dp" "$WORK/r_c"
fi

if want f; then
echo "(f) gavel --redis" >&2
if [ "$HAVE_REDIS_FLAG" = 1 ] && have_redis; then
  redis-cli -p "$REDIS_PORT" flushall >/dev/null 2>&1 || true
  gavel_cell "$WORK/g_f" c --store memory --redis "$REDIS_URL"
else
  na_cell "$WORK/g_f"
fi
row "(f) Gavel --redis, 100 × 16" "$WORK/g_f" "$WORK/r_c"
fi

fmt() { # rps p99_us success always-show-success -> "req/s | p99"
  python3 -c '
import sys
rps, p99, ok, always = sys.argv[1:5]
def f(x):
    return "n/a" if x == "nan" else x
if rps == "nan":
    print("n/a | n/a"); sys.exit()
r = float(rps); p = float(p99) / 1000.0
s = "" if ok == "nan" or (always == "0" and float(ok) >= 0.99995) else " (%.2f%% ok)" % (100 * float(ok))
print("%s%s | %.1f ms" % (("%.0fk" % (r / 1000)) if r >= 10000 else "%.0f" % r, s, p))
' "$@"
}

cpu() { # cpu_us cpu2_us -> "1.23" or "1.23 + 4.56 Redis" or "n/a"
  python3 -c '
import sys
a, b = sys.argv[1:3]
if a == "nan":
    print("n/a"); sys.exit()
print("%.2f" % float(a) + ("" if b == "nan" else " + %.2f Redis" % float(b)))
' "$@"
}

echo
echo "| scenario | Gavel req/s | Gavel p99 | Gavel server CPU µs/req | Redis req/s | Redis p99 | Redis server CPU µs/req | Gavel/Redis |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for n in "${NAMES[@]}"; do
  read -r grps gp99 gok gcpu gcpu2 <<<"$(median "${GCELL[$n]}")"
  read -r rrps rp99 rok rcpu _ <<<"$(median "${RCELL[$n]}")"
  ratio=$(python3 -c 'import sys
a,b=sys.argv[1:3]
print("n/a" if "nan" in (a,b) or float(b)==0 else "%.2f×" % (float(a)/float(b)))' "$grps" "$rrps")
  always=0; [[ $n == "(a)"* ]] && always=1
  echo "| $n | $(fmt "$grps" "$gp99" "$gok" $always) | $(cpu "$gcpu" "$gcpu2") | $(fmt "$rrps" "$rp99" "$rok" $always) | $(cpu "$rcpu" nan) | $ratio |"
done
echo
echo "Medians of $RUNS run(s); client and server share this machine ($(nproc) cores). Redis column: client-bench --target redis against Redis alone (one EVALSHA per request); rows (d) and (f) compare against Redis at 100 × 16. Success rate (answered by RESULT / issued) shown for (a) and wherever below 99.995%. Server CPU µs/req: the server process's user+sys CPU over the client run / requests answered (median over runs); Redis's for the Redis column, and Redis's added after + for (f). Bids spread over $AUCTIONS auction(s)."
