#!/usr/bin/env bash
# Benchmarks switchboard against the Node reference server (bench/reference),
# run by run, alternating the two, each run on a fresh port (and for
# switchboard a fresh SQLite file). Loopback only; every run is bounded.
#
#   bash bench/run.sh [all|idle|fanout|dm|max-fanout|max-dm] ...
#
#   all          idle, fanout and dm, RUNS runs of each per server (default)
#   idle         IDLE_CONNS connections joined to rooms, RSS per connection
#   fanout       FANOUT_ROOMS x FANOUT_MEMBERS, FANOUT_SENDERS at FANOUT_RATE msg/s each
#   dm           DM_PAIRS chat-A-B rooms, both sides at DM_RATE msg/s each
#                (FANOUT_RATE_SWITCHBOARD, DM_RATE_REFERENCE, ...: one server's own
#                rate, to confirm each side at its own maximum, still alternating)
#   max-fanout   per server: step the fanout rate up (x STEP) until p99 > 50 ms or
#                any loss, bisect once, then RUNS confirmation runs at the best rate
#   max-dm       the same for dm with p99 <= 20 ms
#
# Pusher protocol (pusher-js's wire at /app/{key}, triggers through the signed HTTP
# API), switchboard against Soketi 1.6.1 (bench/soketi, installed with npm ci);
# SERVERS defaults to "switchboard soketi" for these. bench/pusher.sh runs them all.
#   pusher-idle         PUSHER_IDLE_CONNS connections, each subscribed to a public
#                       channel (PUSHER_IDLE_CHANNEL_SIZE per channel), RSS per connection
#   pusher-fanout       PUSHER_CHANNELS x PUSHER_MEMBERS subscribers, PUSHER_PUBLISHERS
#                       (one keep-alive HTTP connection each) at PUSHER_RATE triggers/s each
#   max-pusher-fanout   per server: the best PUSHER_RATE with p99 <= 50 ms and no loss
#
# Every setting below can be overridden from the environment. Results (one JSON
# per run, plus summary.txt) go to $OUT (default bench/results/<UTC time>).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODE="${1:-all}"

RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"          # measured seconds per run
WARMUP="${WARMUP:-2}"
SECRET="${SECRET:-bench-secret-$RANDOM$RANDOM}"
case "$MODE" in
  pusher-* | max-pusher-*) SERVERS="${SERVERS:-switchboard soketi}"; PUSHER_MODE=1 ;;
  *) SERVERS="${SERVERS:-switchboard reference}"; PUSHER_MODE=0 ;;
esac
PUSHER_APP_ID="${PUSHER_APP_ID:-bench}"
PUSHER_KEY="${PUSHER_KEY:-bench-key}"
PUSHER_SECRET="${PUSHER_SECRET:-bench-app-secret-$RANDOM$RANDOM}"
export PUSHER_APP_ID PUSHER_KEY PUSHER_SECRET # the loadgen reads them too
PUSHER_IDLE_CONNS="${PUSHER_IDLE_CONNS:-10000}"
PUSHER_IDLE_CHANNEL_SIZE="${PUSHER_IDLE_CHANNEL_SIZE:-10}"
PUSHER_CHANNELS="${PUSHER_CHANNELS:-1}"
PUSHER_MEMBERS="${PUSHER_MEMBERS:-100}"
PUSHER_PUBLISHERS="${PUSHER_PUBLISHERS:-10}"
PUSHER_RATE="${PUSHER_RATE:-20}"    # per publisher
IDLE_CONNS="${IDLE_CONNS:-19000}"
IDLE_ROOM_SIZE="${IDLE_ROOM_SIZE:-10}"
IDLE_HOLD="${IDLE_HOLD:-5}"
FANOUT_ROOMS="${FANOUT_ROOMS:-1}"
FANOUT_MEMBERS="${FANOUT_MEMBERS:-100}"
FANOUT_SENDERS="${FANOUT_SENDERS:-10}"
FANOUT_RATE="${FANOUT_RATE:-20}"    # per sender
FANOUT_P99_MS="${FANOUT_P99_MS:-50}"
DM_PAIRS="${DM_PAIRS:-100}"
DM_RATE="${DM_RATE:-10}"            # per user
DM_P99_MS="${DM_P99_MS:-20}"
STEP="${STEP:-1.5}"                 # rate multiplier between search steps
MAX_STEPS="${MAX_STEPS:-12}"
LOAD_MAX="${LOAD_MAX:-1.0}"         # wait for the 1-minute load to drop below this
LOAD_WAIT="${LOAD_WAIT:-120}"       # ... for at most this many seconds
PORT_BASE="${PORT_BASE:-21000}"
OUT="${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}"

LOADGEN="$HERE/loadgen/target/release/loadgen"
SWITCHBOARD="$ROOT/target/release/switchboard"
mkdir -p "$OUT"
LOG="$OUT/run.log"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# --- build -------------------------------------------------------------------
log "building switchboard (release)"
(cd "$ROOT" && cargo build --release --quiet)
log "building the load generator"
(cd "$HERE/loadgen" && cargo build --release --quiet)
if [[ " $SERVERS " == *" reference "* ]] && [ ! -d "$HERE/reference/node_modules/socket.io" ]; then
  log "installing the reference server's dependencies"
  (cd "$HERE/reference" && npm ci --no-audit --no-fund --silent)
fi
SOKETI="$HERE/soketi/node_modules/@soketi/soketi/bin/server.js"
if [[ " $SERVERS " == *" soketi "* ]] && [ ! -f "$SOKETI" ]; then
  log "installing Soketi (bench/soketi)"
  (cd "$HERE/soketi" && npm ci --no-audit --no-fund --silent)
fi

# As many open files as this machine allows (the hard limit).
ulimit -n "$(ulimit -Hn)"
log "open files limit: $(ulimit -n); results in $OUT"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "memory: $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "switchboard: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "node: $(node --version)"
  [ ! -d "$HERE/reference/node_modules/socket.io" ] ||
    echo "reference: socket.io $(node -p "require('$HERE/reference/node_modules/socket.io/package.json').version")"
  [ ! -f "$SOKETI" ] ||
    echo "soketi: $(node -p "require('$HERE/soketi/node_modules/@soketi/soketi/package.json').version")"
} > "$OUT/machine.txt"

# --- servers -----------------------------------------------------------------
SERVER_PID=""
DBDIR=""

# Counters kept in files: run_one also runs inside $( ) subshells.
bump() { local f="$OUT/.$1" n; n=$(( $(cat "$f" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$f"; echo "$n"; }

next_port() {
  # A fresh port for every run, one nobody listens on, below the ephemeral range.
  while :; do
    PORT=$((PORT_BASE + $(bump port)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
  done
}

start_server() { # $1 = switchboard|reference|soketi; sets SERVER_PID, PORT
  next_port
  local name="$1" slog="$OUT/server-$1-$PORT.log" health="/healthz"
  if [ "$name" = switchboard ]; then
    DBDIR="$(mktemp -d /tmp/sb-bench-db.XXXXXX)"
    # The Pusher app only for the Pusher modes, so the Socket.IO figures stay comparable.
    local pusher_env=()
    [ "$PUSHER_MODE" = 0 ] || pusher_env=(PUSHER_APP_ID="$PUSHER_APP_ID" PUSHER_KEY="$PUSHER_KEY" PUSHER_SECRET="$PUSHER_SECRET")
    env "${pusher_env[@]}" JWT_SECRET="$SECRET" PORT="$PORT" HOST=127.0.0.1 \
      DATABASE_URL="sqlite://$DBDIR/switchboard.db" \
      RATE_LIMIT_PER_SEC=100000000 RATE_LIMIT_BURST=100000000 \
      SHUTDOWN_TIMEOUT_SECS=3 RUST_LOG="${SB_LOG:-warn}" \
      "$SWITCHBOARD" >"$slog" 2>&1 &
  elif [ "$name" = soketi ]; then
    local port="$PORT"; next_port # its metrics server needs a port of its own
    health="/"
    # One app; limits off (-1 is Soketi's "unlimited"); local adapter, no metrics.
    SOKETI_HOST=127.0.0.1 SOKETI_PORT="$port" SOKETI_METRICS_SERVER_PORT="$PORT" \
      SOKETI_METRICS_ENABLED=false SOKETI_DEBUG=false \
      SOKETI_DEFAULT_APP_ID="$PUSHER_APP_ID" SOKETI_DEFAULT_APP_KEY="$PUSHER_KEY" \
      SOKETI_DEFAULT_APP_SECRET="$PUSHER_SECRET" SOKETI_DEFAULT_APP_MAX_CONNS=-1 \
      SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC=-1 SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC=-1 \
      SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC=-1 SOKETI_PRESENCE_MAX_MEMBERS=100000 \
      SOKETI_SHUTDOWN_GRACE_PERIOD=1000 \
      node "$SOKETI" start >"$slog" 2>&1 &
    PORT="$port"
  else
    JWT_SECRET="$SECRET" PORT="$PORT" HOST=127.0.0.1 \
      node "$HERE/reference/server.mjs" >"$slog" 2>&1 &
  fi
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT$health" 2>/dev/null; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "$name exited at start: $(tail -5 "$slog")"; return 1; fi
    sleep 0.1
  done
  log "$name did not become healthy on port $PORT"; return 1
}

stop_server() {
  local pid="$SERVER_PID"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "pid $pid ignored SIGTERM for 10 s, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  else
    log "server pid $pid was no longer running at the end of the run"
  fi
  wait "$pid" 2>/dev/null || true
  SERVER_PID=""
  if [ -n "$DBDIR" ]; then rm -rf "$DBDIR"; DBDIR=""; fi
}
trap stop_server EXIT

wait_quiet() {
  local waited=0 load
  while :; do
    load="$(cut -d' ' -f1 /proc/loadavg)"
    if awk -v l="$load" -v m="$LOAD_MAX" 'BEGIN { exit !(l < m) }'; then break; fi
    if [ "$waited" -ge "$LOAD_WAIT" ]; then log "load still $load after ${waited}s; running anyway"; break; fi
    sleep 5; waited=$((waited + 5))
  done
  [ "$waited" -gt 0 ] && log "waited ${waited}s for load to drop (now $load)"
  return 0
}

# run_one SERVER TAG LOADGEN-ARGS... -> writes $OUT/TAG-SERVER-N.json, prints its path
run_one() {
  local server="$1" tag="$2" seq; shift 2
  seq="$(bump run)"
  local file="$OUT/$(printf '%03d' "$seq")-$tag-$server.json"
  # Wait for a quiet machine first, then start the server right before the run.
  wait_quiet
  start_server "$server" || return 1
  local load; load="$(cut -d' ' -f1-3 /proc/loadavg)"
  log "run $seq: $server $tag (load $load): loadgen $*"
  if ! "$LOADGEN" "$@" --url "ws://127.0.0.1:$PORT" --secret "$SECRET" \
      --server-pid "$SERVER_PID" --label "$server" >"$file.tmp" 2>>"$LOG"; then
    log "loadgen failed for $server $tag"; stop_server; rm -f "$file.tmp"; return 1
  fi
  # The server must still be up after the run.
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "$server died during the run; see $OUT/server-$server-$PORT.log"
  elif [ "$server" = switchboard ]; then
    curl -fsS "http://127.0.0.1:$PORT/metrics" >"${file%.json}.metrics.txt" 2>/dev/null || true
  fi
  stop_server
  # Record the loadgen command and the server alongside the figures.
  node -e '
    const fs = require("fs"); const [f, cmd] = process.argv.slice(1);
    const j = JSON.parse(fs.readFileSync(f + ".tmp", "utf8"));
    j.command = cmd; fs.writeFileSync(f, JSON.stringify(j, null, 2)); fs.unlinkSync(f + ".tmp");
  ' "$file" "loadgen $*"
  log "  -> $(node "$HERE/summarize.mjs" --line "$file")"
  echo "$file"
}

idle_args()   { echo idle --conns "$IDLE_CONNS" --room-size "$IDLE_ROOM_SIZE" --duration "$IDLE_HOLD"; }
fanout_args() { echo fanout --rooms "$FANOUT_ROOMS" --members "$FANOUT_MEMBERS" --senders "$FANOUT_SENDERS" --rate "$1" --duration "$DURATION" --warmup "$WARMUP"; }
dm_args()     { echo dm --pairs "$DM_PAIRS" --rate "$1" --duration "$DURATION" --warmup "$WARMUP"; }
pusher_idle_args()   { echo pusher-idle --conns "$PUSHER_IDLE_CONNS" --channel-size "$PUSHER_IDLE_CHANNEL_SIZE" --duration "$IDLE_HOLD"; }
pusher_fanout_args() { echo pusher-fanout --channels "$PUSHER_CHANNELS" --members "$PUSHER_MEMBERS" --publishers "$PUSHER_PUBLISHERS" --rate "$1" --duration "$DURATION" --warmup "$WARMUP"; }

alternate() { # tag args-function [rate]; e.g. FANOUT_RATE_REFERENCE overrides the rate for one server
  local tag="$1" fn="$2" rate="${3:-}" i server own
  for i in $(seq 1 "$RUNS"); do
    for server in $SERVERS; do
      own="${tag^^}"; own="${own//-/_}_RATE_${server^^}" # e.g. PUSHER_FANOUT_RATE_SOKETI
      # shellcheck disable=SC2046
      run_one "$server" "$tag" $($fn ${!own:-$rate}) >/dev/null || true
    done
  done
}

# passes FILE P99_MS: zero loss, no errors, no disconnects, all acked, p99 within bound
passes() { node "$HERE/summarize.mjs" --passes "$1" "$2"; }

search() { # tag args-function start-rate p99-ms -> per server, the best passing rate, then confirmation runs
  local tag="$1" fn="$2" start="$3" p99="$4" server
  declare -A best=()
  for server in $SERVERS; do
    local rate="$start" good="" bad="" n=0 f
    while [ "$n" -lt "$MAX_STEPS" ]; do
      n=$((n + 1))
      # shellcheck disable=SC2046
      f="$(run_one "$server" "$tag-search" $($fn "$rate"))" || { bad="$rate"; break; }
      if passes "$f" "$p99"; then good="$rate"; rate="$(awk -v r="$rate" -v s="$STEP" 'BEGIN { printf "%.4g", r * s }')"
      else bad="$rate"; break; fi
    done
    if [ -n "$good" ] && [ -n "$bad" ]; then
      local mid; mid="$(awk -v a="$good" -v b="$bad" 'BEGIN { printf "%.4g", (a + b) / 2 }')"
      # shellcheck disable=SC2046
      f="$(run_one "$server" "$tag-search" $($fn "$mid"))" && passes "$f" "$p99" && good="$mid"
    fi
    log "$server: best passing $tag rate per sender = ${good:-none} (first failing: ${bad:-none})"
    best[$server]="${good:-$start}"
  done
  local i
  for i in $(seq 1 "$RUNS"); do
    for server in $SERVERS; do
      # shellcheck disable=SC2046
      run_one "$server" "$tag-max" $($fn "${best[$server]}") >/dev/null || true
    done
  done
}

case "$MODE" in
  all)        alternate idle idle_args; alternate fanout fanout_args "$FANOUT_RATE"; alternate dm dm_args "$DM_RATE" ;;
  idle)       alternate idle idle_args ;;
  fanout)     alternate fanout fanout_args "$FANOUT_RATE" ;;
  dm)         alternate dm dm_args "$DM_RATE" ;;
  max-fanout) search fanout fanout_args "$FANOUT_RATE" "$FANOUT_P99_MS" ;;
  max-dm)     search dm dm_args "$DM_RATE" "$DM_P99_MS" ;;
  pusher-all) alternate pusher-idle pusher_idle_args; alternate pusher-fanout pusher_fanout_args "$PUSHER_RATE"
              search pusher-fanout pusher_fanout_args "$PUSHER_RATE" "$FANOUT_P99_MS" ;;
  pusher-idle)   alternate pusher-idle pusher_idle_args ;;
  pusher-fanout) alternate pusher-fanout pusher_fanout_args "$PUSHER_RATE" ;;
  max-pusher-fanout) search pusher-fanout pusher_fanout_args "$PUSHER_RATE" "$FANOUT_P99_MS" ;;
  *) echo "usage: $0 [all|idle|fanout|dm|max-fanout|max-dm|pusher-all|pusher-idle|pusher-fanout|max-pusher-fanout]" >&2; exit 2 ;;
esac

node "$HERE/summarize.mjs" "$OUT" | tee "$OUT/summary.txt"
