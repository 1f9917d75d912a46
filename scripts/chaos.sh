#!/usr/bin/env bash
# Fault harness: gavel-server under load while a nemesis kills, pauses and
# restarts it, stops its PostgreSQL, kills its Redis and drops client
# connections mid-request; then a checker compares every acknowledged
# outcome with the final state. See docs/operations.md, "Fault harness".
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/chaos.sh [--cycles N] [--store sqlite|postgres] [--redis] [--no-build] [HARNESS FLAGS…]

  --cycles N         nemesis cycles, one or two overlapping faults each (default 20)
  --store KIND       sqlite (default; files in a temp dir) or postgres (a throwaway
                     PostgreSQL the harness starts, stops and starts again)
  --redis            cross-node mode: a throwaway Redis (appendonly yes,
                     appendfsync always) holds the state and is SIGKILLed too
  --no-build         use the release binaries as they are (default: cargo build
                     --release first)
  --bin-dir DIR      where gavel-server and client-bench are (default:
                     $CARGO_TARGET_DIR/release, else target/release)

Other flags go to the harness: `client-bench chaos --help` (--seed, --clients,
--time-limit, --faults, --work-dir, --keep, …).

Prints violations (if any), then one line
  cycles=N faults=N acked=N in_doubt=N violations=N
and exits 1 on a violation, 2 if the harness itself failed. Loopback only;
faults stop after --cycles or --time-limit (600 s), whichever comes first.
Needs redis-server for --redis and the PostgreSQL 15 server programs for
--store postgres (apt-get install -y redis-server postgresql-15; as root,
PostgreSQL runs as the `postgres` user).
USAGE
}

cd "$(dirname "$0")/.."

build=1
bin_dir="${CARGO_TARGET_DIR:-target}/release"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --no-build) build=0 ;;
    --bin-dir) bin_dir=$2; build=0; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done

if [ "$build" = 1 ]; then
  cargo build --release -p gavel-server -p client-bench
fi
for bin in "$bin_dir/gavel-server" "$bin_dir/client-bench"; do
  [ -x "$bin" ] || { echo "chaos.sh: $bin missing: run without --no-build" >&2; exit 2; }
done

# The harness stops and starts PostgreSQL itself: never an external server.
unset GAVEL_TEST_PG_URL
exec "$bin_dir/client-bench" chaos --server-bin "$bin_dir/gavel-server" "${args[@]+"${args[@]}"}"
