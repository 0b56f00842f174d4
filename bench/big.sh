#!/usr/bin/env bash
# Rooms of thousands, connecting:
#   bash bench/big.sh [--quick]
#
# Two Redis-backed edges, fresh for each run; roomcast-loadgen idle opens
# every connection (spread over both nodes, 256 handshakes in flight),
# holds them, and reports the time to connect them all and the handshake
# latency; RSS per connection is both nodes' growth over their idle
# baseline. Runs, all in one go so they compare:
#   - 1 room x 5,000 with exact presence (presence.summary_above past the
#     room: every join is news to everyone, the list goes whole to each
#     newcomer), then with summarised presence (the default), and 1 room x
#     10,000 summarised;
#   - the same 5,000 connections in rooms of 10 (the small-room figure);
#   - 10,000 connections into 10,000 rooms in a burst, Redis on loopback
#     and FAR_MS (default 1) ms away each way through the delay proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
far_ms=${FAR_MS:-1}
# shellcheck source=bench/lib.sh
. bench/lib.sh

if [ "$quick" = "--quick" ]; then big=1000; bigger=2000; burst=2000
else big=5000; bigger=10000; burst=10000; fi

start_redis
start_delay_proxy "$far_ms"

rows=()
run=0
# bigrun LABEL REDIS-URL CONNECTIONS ROOM-SIZE [VAR=value ...]
bigrun() {
  local label=$1 url=$2 conns=$3 size=$4
  run=$((run + 1))
  redis_url=$url
  local pa pb ea eb
  pa=$(free_port); start_edge "$pa" "big-$run-a" ROOMCAST__REDIS__KEY_PREFIX="run$run" "${@:5}"; ea=$started
  pb=$(free_port); start_edge "$pb" "big-$run-b" ROOMCAST__REDIS__KEY_PREFIX="run$run" "${@:5}"; eb=$started
  wait_ready "$pa"; wait_ready "$pb"
  sleep 1
  local rss0=$(( $(rss_kib "$ea") + $(rss_kib "$eb") ))
  echo "== $label: $conns connections, rooms of $size, over two nodes"
  rm -f "$tmp/ready"
  "$loadgen" idle --urls "http://127.0.0.1:$pa,http://127.0.0.1:$pb" --auto --connections "$conns" \
    --room-size "$size" --hold 3 --connect-concurrency 256 --ready-file "$tmp/ready" > "$tmp/run-$run.txt" &
  local lg=$!
  while [ ! -f "$tmp/ready" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.1; done
  sleep 1
  local rss1=$(( $(rss_kib "$ea") + $(rss_kib "$eb") ))
  wait "$lg" || true
  cat "$tmp/run-$run.txt"
  local r; r=$(tail -1 "$tmp/run-$run.txt")
  local per; per=$(echo "scale=1; ($rss1 - $rss0) / $conns" | bc -l)
  rows+=("| $label | $(json "$r" connections) (failed $(json "$r" failed)) | $(json "$r" connect_seconds) | $(json "$r" connects_per_second) | $(json "$r" handshake_p50_ms) / $(json "$r" handshake_p99_ms) / $(json "$r" handshake_max_ms) | $per |")
  kill -TERM "$ea" "$eb"; wait "$ea" "$eb" 2>/dev/null || true
}

local_url="redis://127.0.0.1:$redis_port/0"
far_url="redis://$proxy/0"
bigrun "1 room x $big, exact presence (summary_above past the room)" "$local_url" "$big" "$big" \
  ROOMCAST__PRESENCE__SUMMARY_ABOVE=1000000
bigrun "1 room x $big, summarised presence (default)" "$local_url" "$big" "$big"
bigrun "1 room x $bigger, summarised presence" "$local_url" "$bigger" "$bigger"
bigrun "$big in rooms of 10 (small-room figure)" "$local_url" "$big" 10
bigrun "$burst rooms x 1, burst, Redis on loopback" "$local_url" "$burst" 1
bigrun "$burst rooms x 1, burst, Redis ${far_ms} ms away" "$far_url" "$burst" 1

echo
echo "| shape (2 edges, 1 Redis, 256 handshakes in flight) | connected | seconds to connect all | connects/s | handshake p50 / p99 / max (ms) | RSS per connection (KiB, both nodes) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
