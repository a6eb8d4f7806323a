#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests, then the Node
# compatibility suite (real socket.io-client and pusher SDK) against the
# release binary — on SQLite, again on Postgres when a Postgres server can be
# started here (a throwaway cluster on loopback, removed at the end), and a
# third time as a multi-node cluster (SB_TEST_CLUSTER=2: every test's clients
# spread over two nodes sharing that Postgres and a throwaway redis-server,
# plus compat-tests/test/cluster.test.mjs) when redis-server is installed too.
# Last, client-demo (the legacy Next.js app after its move): its migration budget
# against ../shared/legacy-pusher-app, then the real-browser tests (headless Debian
# Chromium driven by playwright-core, `next build` + `next start`, the release binary):
# the unmodified legacy app (pusher-js) chatting with client-demo (socket.io), then
# client-demo alone.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_dir=""
stop_postgres() {
  if [ -n "$pg_dir" ]; then
    $pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
}
redis_dir=""
redis_pid=""
stop_redis() {
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" >/dev/null 2>&1 || true
    wait "$redis_pid" >/dev/null 2>&1 || true
  fi
  if [ -n "$redis_dir" ]; then
    rm -rf "$redis_dir"
  fi
}
cleanup() {
  stop_redis
  stop_postgres
}
trap cleanup EXIT

start_postgres() {
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || return 1
  pg_run=""
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || return 1
    pg_run="runuser -u postgres --"
  fi
  pg_dir=$(mktemp -d /tmp/switchboard-pg.XXXXXX)
  [ -z "$pg_run" ] || chown postgres "$pg_dir"
  local port=$((20000 + RANDOM % 20000))
  $pg_run "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres >/dev/null
  $pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
    -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400" start >/dev/null
  export SWITCHBOARD_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
}

# A throwaway redis-server on loopback (no persistence, its own folder).
start_redis() {
  command -v redis-server >/dev/null 2>&1 || return 1
  command -v redis-cli >/dev/null 2>&1 || return 1
  redis_dir=$(mktemp -d /tmp/switchboard-redis.XXXXXX)
  local attempt port i
  for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    # a port someone already answers on is not ours
    if redis-cli -p "$port" ping >/dev/null 2>&1; then continue; fi
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$redis_dir" --daemonize no >"$redis_dir/log" 2>&1 &
    redis_pid=$!
    for i in $(seq 1 100); do
      if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then
        export SB_TEST_REDIS="redis://127.0.0.1:$port"
        export SWITCHBOARD_TEST_REDIS="$SB_TEST_REDIS"
        return 0
      fi
      kill -0 "$redis_pid" 2>/dev/null || break # exited (port taken?): try another port
      sleep 0.1
    done
    kill "$redis_pid" >/dev/null 2>&1 || true
    wait "$redis_pid" >/dev/null 2>&1 || true
    redis_pid=""
  done
  echo "redis-server did not start; its log:" >&2
  cat "$redis_dir/log" >&2 || true
  return 1
}

if start_postgres; then
  echo "== postgres on ${SWITCHBOARD_TEST_POSTGRES}"
elif [ "${REQUIRE_POSTGRES:-0}" = 1 ]; then
  echo "REQUIRE_POSTGRES=1 but no Postgres server could be started" >&2
  exit 1
else
  echo "== no Postgres server here: the Postgres runs are skipped (install postgresql to include them)"
fi

if start_redis; then
  echo "== redis on ${SB_TEST_REDIS} ($(redis-server --version | cut -d' ' -f1-3))"
elif [ "${REQUIRE_REDIS:-0}" = 1 ]; then
  echo "REQUIRE_REDIS=1 but no redis-server could be started" >&2
  exit 1
else
  echo "== no redis-server here: the cluster runs are skipped (install redis-server to include them)"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== build (release)"
cargo build --release --locked

echo "== cargo test (release profile, shares the build above)"
cargo test --release --locked

echo "== compat-tests on SQLite (node --test: socket.io-client, pusher SDK)"
(cd compat-tests && npm ci --no-audit --no-fund --loglevel=error)
export SWITCHBOARD_BIN="$PWD/target/release/switchboard"
env -u SB_TEST_REDIS npm --prefix compat-tests test

if [ -n "${SWITCHBOARD_TEST_POSTGRES:-}" ]; then
  echo "== compat-tests on Postgres"
  # one node; the cluster tests wait for the cluster pass below
  env -u SB_TEST_REDIS SB_TEST_POSTGRES="$SWITCHBOARD_TEST_POSTGRES" npm --prefix compat-tests test
fi

if [ -n "${SWITCHBOARD_TEST_POSTGRES:-}" ] && [ -n "${SB_TEST_REDIS:-}" ]; then
  echo "== compat-tests on a 2-node cluster (Postgres + Redis), with cluster.test.mjs"
  SB_TEST_POSTGRES="$SWITCHBOARD_TEST_POSTGRES" SB_TEST_REDIS="$SB_TEST_REDIS" SB_TEST_CLUSTER=2 \
    npm --prefix compat-tests test
elif [ "${REQUIRE_REDIS:-0}" = 1 ]; then
  echo "REQUIRE_REDIS=1 but the cluster pass needs Postgres as well" >&2
  exit 1
else
  echo "== cluster pass skipped (needs both Postgres and redis-server)"
fi

echo "== client-demo: migration budget against the legacy app (scripts/migration-budget.mjs)"
node scripts/migration-budget.mjs

echo "== client-demo: real browser, legacy app + client-demo, then client-demo (headless Chromium + playwright-core, next build/start, SQLite)"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium (the test never downloads a browser)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "chromium is not installed (apt-get install chromium)" >&2
    exit 1
  fi
fi
(cd client-demo && npm ci --no-audit --no-fund --loglevel=error)
# One switchboard port for both browser tests: client-demo's build bakes it in, so the
# second test reuses the first one's build (mixed.test.mjs builds it beside the legacy app).
E2E_SWITCHBOARD_PORT=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })')
env -u SB_TEST_REDIS -u SB_TEST_POSTGRES E2E_SWITCHBOARD_PORT="$E2E_SWITCHBOARD_PORT" npm --prefix client-demo run e2e
