#!/usr/bin/env bash
# Pusher-protocol benchmark: switchboard against Soketi 1.6.1 (bench/soketi), in
# the same run, alternating, a fresh port (and SQLite file) per run. Subscribers
# speak Pusher protocol 7 at /app/{key} as pusher-js does; publishers trigger
# through the signed HTTP API (POST /apps/{id}/events). Loopback only.
#
#   bash bench/pusher.sh [pusher-all|pusher-idle|pusher-fanout|max-pusher-fanout]
#
#   pusher-all (default)  idle, then fanout at PUSHER_RATE, then the max search
#                         (deliveries/s at p99 <= 50 ms, no loss)
#
# Knobs (environment; see bench/run.sh for the rest): RUNS, DURATION, WARMUP,
# PUSHER_IDLE_CONNS, PUSHER_IDLE_CHANNEL_SIZE, PUSHER_CHANNELS, PUSHER_MEMBERS,
# PUSHER_PUBLISHERS, PUSHER_RATE (per publisher), STEP, MAX_STEPS, PORT_BASE, OUT.
# The summary prints each table with a `switchboard/soketi` row of ratios of medians.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE="${1:-pusher-all}"
case "$MODE" in
  pusher-all | pusher-idle | pusher-fanout | max-pusher-fanout) ;;
  *) echo "usage: $0 [pusher-all|pusher-idle|pusher-fanout|max-pusher-fanout]" >&2; exit 2 ;;
esac
exec bash "$HERE/run.sh" "$MODE"
