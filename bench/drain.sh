#!/usr/bin/env bash
# A node drain in a big room:
#   bash bench/drain.sh [--quick]
#
# Four Redis-backed edges; roomcast-loadgen fanout puts MEMBERS (default
# 10,000) in one room spread over the four and publishes; a third of the way
# into the publishing window one edge gets SIGTERM: it drains (its quarter of
# the room is closed with 1012) and those members reconnect to the other
# three with since=<last offset seen> (fanout --reconnect). Reported: lost /
# duplicated / out of order over the whole room, delivery latency, how long
# the reconnects took, and how many presence frames the members received in
# all (the storm a drain would cause without coalesced presence).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
# shellcheck source=bench/lib.sh
. bench/lib.sh

if [ "$quick" = "--quick" ]; then members=${MEMBERS:-1000}; secs=9
else members=${MEMBERS:-10000}; secs=15; fi
rate=1; publishers=2

start_redis
redis_url="redis://127.0.0.1:$redis_port/0"

urls=""; edges=()
for i in 0 1 2 3; do
  p=$(free_port); start_edge "$p" "drain-$i"; edges+=("$started"); wait_ready "$p"
  urls="$urls${urls:+,}http://127.0.0.1:$p"
done

echo "== 1 room x $members over 4 edges, $publishers publishers x $rate msg/s for $secs s; SIGTERM to one edge after $((secs / 3)) s"
"$loadgen" fanout --urls "$urls" --auto --rooms 1 --members "$members" --publishers "$publishers" \
  --rate "$rate" --duration "$secs" --drain 5 --reconnect --connect-concurrency 256 \
  --ready-file "$tmp/ready" > "$tmp/drain.txt" &
lg=$!
while [ ! -f "$tmp/ready" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.1; done
sleep $((secs / 3))
kill -TERM "${edges[3]}"
wait "$lg" || true
cat "$tmp/drain.txt"
r=$(tail -1 "$tmp/drain.txt")
cat <<TABLE

| 1 room x $members over 4 edges, one drained mid-run | value |
|---|---|
| seconds to connect all | $(json "$r" connect_seconds) |
| deliveries; lost / duplicated / out of order; closed for good | $(json "$r" deliveries_received); $(json "$r" lost) / $(json "$r" duplicated) / $(json "$r" out_of_order); $(json "$r" connections_closed_early) |
| reconnects; p50 / p99 / max (ms) | $(json "$r" reconnects); $(json "$r" reconnect_p50_ms) / $(json "$r" reconnect_p99_ms) / $(json "$r" reconnect_max_ms) |
| delivery latency p50 / p99 / max (ms) | $(json "$r" latency_p50_ms) / $(json "$r" latency_p99_ms) / $(json "$r" latency_max_ms) |
| presence frames received by all members, connect phase included | $(json "$r" presence_frames) |
TABLE
