#!/usr/bin/env bash
# dm across a cluster: NODES switchboard nodes sharing one throwaway
# redis-server on loopback, the two sides of every pair on different nodes, so
# every message crosses Redis on its way to the other side. Each node stores
# into a SQLite file of its own (the store is not what this measures; a real
# cluster shares Postgres). Loopback only; every run is bounded.
#
#   bash bench/cluster-dm.sh                      # the working tree's binary
#   BINARIES="old=/path/a new=/path/b" bash bench/cluster-dm.sh
#
# For each rate in RATES (msgs/s per user), RUNS runs per binary, alternating
# the binaries run by run. One JSON per run in $OUT; Redis' own CPU is not in
# the server figures.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
NODES="${NODES:-2}"
PAIRS="${PAIRS:-100}"
RATES="${RATES:-10 25 40}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
BINARIES="${BINARIES:-switchboard=$ROOT/target/release/switchboard}"
OUT="${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)-cluster-dm}"
SECRET="bench-secret-$RANDOM$RANDOM"
LOADGEN="$HERE/loadgen/target/release/loadgen"

command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
mkdir -p "$OUT"
[ "${BINARIES}" != "switchboard=$ROOT/target/release/switchboard" ] || (cd "$ROOT" && cargo build --release --quiet)
(cd "$HERE/loadgen" && cargo build --release --quiet)
ulimit -n "$(ulimit -Hn)"

WORK="$(mktemp -d /tmp/sb-cluster-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

run=0
for rate in $RATES; do
  for i in $(seq 1 "$RUNS"); do
    for entry in $BINARIES; do
      name="${entry%%=*}" bin="${entry#*=}"
      run=$((run + 1))
      prefix="bench$run$RANDOM"
      urls=() pids=()
      for n in $(seq 1 "$NODES"); do
        port="$(free_port)"
        JWT_SECRET="$SECRET" PORT="$port" HOST=127.0.0.1 \
          DATABASE_URL="sqlite://$WORK/$prefix-$n.db" \
          REDIS_URL="redis://127.0.0.1:$REDIS_PORT" REDIS_PREFIX="$prefix" \
          RATE_LIMIT_PER_SEC=100000000 RATE_LIMIT_BURST=100000000 \
          SHUTDOWN_TIMEOUT_SECS=3 RUST_LOG=warn "$bin" >"$WORK/$prefix-$n.log" 2>&1 &
        pids+=($!)
        urls+=("ws://127.0.0.1:$port")
      done
      for u in "${urls[@]}"; do
        for _ in $(seq 1 100); do curl -fsS -o /dev/null "http${u#ws}/readyz" 2>/dev/null && break; sleep 0.1; done
      done
      file="$OUT/$(printf '%03d' "$run")-dm-r$rate-$name.json"
      echo "[$(date -u +%H:%M:%S)] run $run: $name, $PAIRS pairs at $rate msgs/s per user over $NODES nodes" >&2
      "$LOADGEN" dm --url "$(IFS=,; echo "${urls[*]}")" --server-pid "$(IFS=,; echo "${pids[*]}")" \
        --secret "$SECRET" --pairs "$PAIRS" --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
        --label "$name" >"$file" 2>>"$OUT/run.log" || echo "loadgen failed" >&2
      for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
      for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
      node -e '
        const r = require(process.argv[1]);
        const l = r.latency || {};
        console.log(`${r.label}\t${r.params.offered_msgs_per_s} msgs/s offered\tacked/s ${r.msgs_acked_per_s}\tdeliveries/s ${r.deliveries_per_s}\tlost ${r.lost_deliveries}\tp50 ${l.p50_ms}\tp99 ${l.p99_ms}\tmax ${l.max_ms}\tservers cpu ${r.usage.server_cpu_cores}\tloadgen cpu ${r.usage.loadgen_cpu_cores}\tsteal ${r.usage.steal_pct}%`)
      ' "$file" | tee -a "$OUT/summary.txt"
    done
  done
done
