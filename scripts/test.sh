#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests, then the Node
# compatibility suite (real socket.io-client) against the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== build (release)"
cargo build --release --locked

echo "== cargo test (release profile, shares the build above)"
cargo test --release --locked

echo "== compat-tests (node --test, socket.io-client)"
(cd compat-tests && npm ci --no-audit --no-fund --loglevel=error)
SWITCHBOARD_BIN="$PWD/target/release/switchboard" npm --prefix compat-tests test
