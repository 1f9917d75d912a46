#!/usr/bin/env bash
# Runs every test of the workspace: installs what the tests need when it is
# missing (Debian/Ubuntu, apt-get; through sudo unless root), then runs
# `cargo test --workspace "$@"` (without --workspace when "$@" names
# packages with -p).
#
#   redis-server, redis-cli    redis-server, redis-tools   (cross-node tests)
#   PostgreSQL 15 server       postgresql-15               (PostgreSQL store tests)
#   tshark                     tshark                      (Wireshark dissector test)
#   chromium                   chromium                    (client-bench --report test,
#                                                          renders the page headless)
#
# PostgreSQL is looked for where the tests look (gavel_testkit::pg): in
# $GAVEL_PG_BIN_DIR when set (then nothing is installed for it), else in
# /usr/lib/postgresql/15/bin, else in `pg_config --bindir`.
#
# Usage: scripts/test.sh [cargo test arguments...]
#   e.g. scripts/test.sh -p gavel-server --test bad_input
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive

has_postgres() {
    if [ -n "${GAVEL_PG_BIN_DIR:-}" ]; then
        return 0 # the caller's choice; the tests say so if it is wrong
    fi
    [ -x /usr/lib/postgresql/15/bin/postgres ] && return 0
    local bindir
    bindir=$(pg_config --bindir 2>/dev/null) && [ -x "$bindir/postgres" ]
}

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
has_postgres || need+=(postgresql-15)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ "${#need[@]}" -gt 0 ]; then
    echo "test.sh: installing ${need[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: no apt-get here; install the equivalents of: ${need[*]}" >&2
        exit 1
    fi
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "test.sh: not root and no sudo; as root run:" >&2
            echo "  apt-get install -y --no-install-recommends ${need[*]}" >&2
            exit 1
        fi
        # -n: fail rather than prompt when there is no terminal (CI).
        SUDO=(sudo -n)
        [ -t 0 ] && SUDO=(sudo)
        SUDO+=(env DEBIAN_FRONTEND=noninteractive)
    fi
    # wireshark-common asks whether non-root users may capture; answer no
    # up front so the install never prompts (the tests capture as root).
    echo "wireshark-common wireshark-common/install-setuid boolean false" \
        | "${SUDO[@]}" debconf-set-selections
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian's postinst starts a cluster on 5432; the tests start their own
# throwaway servers on free ports and do not need it.

# The whole workspace, unless the arguments pick packages (cargo would
# otherwise take --workspace over -p and test everything).
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        -p | -p* | --package | --package=*) scope=() ;;
    esac
done
exec cargo test "${scope[@]}" "$@"
