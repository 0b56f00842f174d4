#!/usr/bin/env bash
# Many rooms per socket with Redis a set time away, and a reconnect storm:
#   bash bench/far.sh [--quick]
#
# One Redis-backed edge reaches Redis through roomcast-loadgen's delay proxy
# (each direction delayed FAR_MS, default 1 ms; there is no tc netem here).
# roomcast-loadgen multiroom subscribes its sockets to many rooms, then
# publishes; halfway through, the node's pub/sub connection is cut (CLIENT
# KILL TYPE pubsub): the node reconnects, resubscribes every room and
# catches each up from its stream. What the clients see of that (lost,
# duplicated, out of order, latency max) is the measure. EDGE=path runs
# another build of the edge (to compare two commits; see bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
far_ms=${FAR_MS:-1}
# shellcheck source=bench/lib.sh
. bench/lib.sh

if [ "$quick" = "--quick" ]; then conns=500; rooms=200; k=10; rate=50; secs=6
else conns=5000; rooms=1000; k=20; rate=100; secs=10; fi

start_redis
start_delay_proxy "$far_ms"

redis_url="redis://$proxy/0"
port=$(free_port)
start_edge "$port" bench-far
wait_ready "$port"

echo "== multiroom, Redis ${far_ms} ms away each way: $conns sockets x $k rooms (of $rooms), $rate msg/s," \
  "the node's pub/sub connection cut after $((secs / 2)) s"
"$loadgen" multiroom --urls "http://127.0.0.1:$port" --auto --connections "$conns" --rooms "$rooms" \
  --rooms-per-conn "$k" --rate "$rate" --duration "$secs" --drain 3 --connect-concurrency 64 \
  --publish-file "$tmp/pub" > "$tmp/far.txt" &
lg=$!
while [ ! -f "$tmp/pub" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
sleep $((secs / 2))
killed=$(redis-cli -p "$redis_port" CLIENT KILL TYPE pubsub)
wait "$lg" || true
cat "$tmp/far.txt"
echo "-- the edge's log (warnings):"; tail -20 "$tmp/bench-far.log"
r=$(tail -1 "$tmp/far.txt")
curl -s "http://127.0.0.1:$port/metrics" | grep '^roomcast_connections_closed_total' || true
backfilled=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^roomcast_history_backfilled_total / {print $2}')
cat <<TABLE

| multiroom, Redis ${far_ms} ms away, pub/sub cut mid-run ($killed connection) | value |
|---|---|
| sockets x rooms each (of rooms); subscriptions/s while connecting | $conns x $k (of $rooms); $(json "$r" subscriptions_per_second) |
| deliveries; lost / duplicated / out of order | $(json "$r" deliveries_received); $(json "$r" lost) / $(json "$r" duplicated) / $(json "$r" out_of_order) |
| latency p50 / p99 / p99.9 / max (ms) | $(json "$r" latency_p50_ms) / $(json "$r" latency_p99_ms) / $(json "$r" latency_p999_ms) / $(json "$r" latency_max_ms) |
| messages backfilled from streams after the cut | ${backfilled:-0} |
TABLE
