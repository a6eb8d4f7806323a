#!/usr/bin/env bash
# Soak and fault run (minutes, not a CI test): two switchboard nodes sharing a
# throwaway Postgres and a throwaway redis-server, a mixed chat load from the
# real socket.io-client, and faults on a timeline: a slow reader, kill -9 of a
# node, a Redis restart. Prints acked-but-missing messages, missing
# deliveries, presence ghosts after the node death, RSS at start and end and
# the slow-consumer metric; exits non-zero when a figure misses its target.
# See docs/reliability.md.
#
#   bash bench/soak.sh
#   DURATION=600 PAIRS=500 bash bench/soak.sh
#
# Knobs (environment): DURATION (300 s), WARMUP (20 s), PAIRS (200),
# DM_INTERVAL_MS (2000, per pair), ROOM_MEMBERS (30), ROOM_RATE (8 msg/s),
# CHURNERS (8), CHURN_MS (5000), POLLING_PCT (10), NODE_TIMEOUT_MS (15000),
# GHOST_LIMIT_S (30), RSS_GROWTH_MAX_PCT (20), SLOW_READER_MAX_S (60),
# REDIS_DOWN_S (3), SWITCHBOARD_BIN (target/release/switchboard, built when
# unset), OUT (bench/results/<UTC time>-soak).
#
# Loopback only; every loop is bounded; every process it starts is stopped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)-soak}"

command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || { echo "needs Postgres (apt-get install postgresql)" >&2; exit 1; }

if [ -z "${SWITCHBOARD_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet)
  SWITCHBOARD_BIN="$ROOT/target/release/switchboard"
fi
export SWITCHBOARD_BIN
if [ ! -d "$HERE/soak/node_modules/socket.io-client" ] || [ ! -d "$HERE/soak/node_modules/pusher" ]; then
  (cd "$HERE/soak" && npm ci --no-audit --no-fund --loglevel=error)
fi
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

WORK="$(mktemp -d /tmp/sb-soak.XXXXXX)"
PIDFILE="$WORK/pids"
: >"$PIDFILE"
pg_run=""
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "running as root needs the postgres user" >&2; exit 1; }
  pg_run="runuser -u postgres --"
fi
SOAK_PID=""
cleanup() {
  if [ -n "$SOAK_PID" ]; then kill -TERM "$SOAK_PID" 2>/dev/null || true; wait "$SOAK_PID" 2>/dev/null || true; fi
  # processes the soak started (it kills them itself; this is for when it could not)
  while read -r pid name; do
    [ -n "$pid" ] || continue
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${name:0:15}" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done <"$PIDFILE"
  $pg_run "$pg_bin/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  for f in "$WORK"/node*.log "$WORK"/redis.log; do
    [ -f "$f" ] && cp "$f" "$OUT/server-$(basename "$f")"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

[ -z "$pg_run" ] || chown postgres "$WORK"
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$pg_run "$pg_bin/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
$pg_run "$pg_bin/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-p $pg_port -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
psql "postgres://postgres@127.0.0.1:$pg_port/postgres" -qc 'CREATE DATABASE soak'

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "switchboard: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "postgres: $("$pg_bin/postgres" --version); $(redis-server --version | cut -d' ' -f1-3); node $(node --version)"
} >"$OUT/machine.txt"

set +e
SOAK_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/soak" SOAK_WORK="$WORK" SOAK_OUT="$OUT" SOAK_PIDFILE="$PIDFILE" \
  node "$HERE/soak/soak.mjs" &
SOAK_PID=$!
wait "$SOAK_PID"
rc=$?
SOAK_PID=""
set -e
echo "results in $OUT" >&2
exit "$rc"
