#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests, then the Node
# compatibility suite (real socket.io-client and pusher SDK) against the
# release binary — on SQLite, and again on Postgres when a Postgres server
# can be started here (a throwaway cluster on loopback, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

pg_dir=""
stop_postgres() {
  if [ -n "$pg_dir" ]; then
    $pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
}
trap stop_postgres EXIT

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

if start_postgres; then
  echo "== postgres on ${SWITCHBOARD_TEST_POSTGRES}"
elif [ "${REQUIRE_POSTGRES:-0}" = 1 ]; then
  echo "REQUIRE_POSTGRES=1 but no Postgres server could be started" >&2
  exit 1
else
  echo "== no Postgres server here: the Postgres runs are skipped (install postgresql to include them)"
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
npm --prefix compat-tests test

if [ -n "${SWITCHBOARD_TEST_POSTGRES:-}" ]; then
  echo "== compat-tests on Postgres"
  SB_TEST_POSTGRES="$SWITCHBOARD_TEST_POSTGRES" npm --prefix compat-tests test
fi
