#!/usr/bin/env bash
# What redis.ack_replicas costs:
#   bash bench/replicas.sh [--quick]
#
# A primary with one replica; the replica on loopback, then FAR_MS (default
# 1) ms away each way (it replicates through roomcast-loadgen's delay
# proxy, as a replica in another zone would). For each, two Redis-backed
# edges run the same fanout (100 rooms x 10 members, publishers spread in
# time), with ack_replicas 0 (an ack means "on the primary") and 1 ("on a
# replica too"): the delivery latency (publish to receipt: with the option a
# message is published only once the replica has it) and the edges' and
# Redis's CPU per delivery.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
far_ms=${FAR_MS:-1}
# shellcheck source=bench/lib.sh
. bench/lib.sh

# --rate is per room: 100 rooms x 10 msg/s = 1,000 msg/s, 10,000 deliveries/s.
if [ "$quick" = "--quick" ]; then rate=10; secs=4; else rate=10; secs=15; fi

start_redis
primary_port=$redis_port
primary_pid=${pids[-1]}
start_delay_proxy "$far_ms"

# start_replica UPSTREAM-PORT: a replica of the primary (directly or through
# the proxy); its port in $replica_port.
start_replica() {
  replica_port=$(free_port)
  redis-server --port "$replica_port" --bind 127.0.0.1 --dir "$tmp" --dbfilename "r$replica_port.rdb" \
    --save "" --appendonly no --loglevel warning --replicaof 127.0.0.1 "$1" > "$tmp/replica.log" 2>&1 &
  replica_pid=$!
  pids+=("$replica_pid")
  until redis-cli -p "$replica_port" info replication 2>/dev/null | grep -q 'master_link_status:up'; do
    sleep 0.1
  done
}

rows=()
run=0
# one LABEL ACK_REPLICAS
one() {
  run=$((run + 1))
  redis_url="redis://127.0.0.1:$primary_port/0"
  local pa pb ea eb
  pa=$(free_port); start_edge "$pa" "rep-$run-a" ROOMCAST__REDIS__KEY_PREFIX="rep$run" ROOMCAST__REDIS__ACK_REPLICAS="$2"; ea=$started
  pb=$(free_port); start_edge "$pb" "rep-$run-b" ROOMCAST__REDIS__KEY_PREFIX="rep$run" ROOMCAST__REDIS__ACK_REPLICAS="$2"; eb=$started
  wait_ready "$pa"; wait_ready "$pb"
  echo "== $1"
  "$loadgen" fanout --urls "http://127.0.0.1:$pa,http://127.0.0.1:$pb" --auto --rooms 100 --members 10 \
    --publishers 1 --rate "$rate" --duration "$secs" --drain 2 --ready-file "$tmp/ready-$run" \
    --done-file "$tmp/done-$run" > "$tmp/rep-$run.txt" &
  local lg=$!
  while [ ! -f "$tmp/ready-$run" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
  local c0 r0
  c0=$(cpu_sum "$ea" "$eb"); r0=$(cpu_of "$primary_pid")
  while [ ! -f "$tmp/done-$run" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
  local c1 r1
  c1=$(cpu_sum "$ea" "$eb"); r1=$(cpu_of "$primary_pid")
  wait "$lg" || true
  cat "$tmp/rep-$run.txt"
  local r; r=$(tail -1 "$tmp/rep-$run.txt")
  local n; n=$(json "$r" deliveries_received)
  rows+=("| $1 | $n; $(json "$r" lost) / $(json "$r" duplicated) | $(json "$r" latency_p50_ms) / $(json "$r" latency_p99_ms) / $(json "$r" latency_max_ms) | $(printf '%.1f' "$(echo "($c1 - $c0) * 1000000 / $n" | bc -l)") | $(printf '%.1f' "$(echo "($r1 - $r0) * 1000000 / $n" | bc -l)") |")
  kill -TERM "$ea" "$eb"; wait "$ea" "$eb" 2>/dev/null || true
}

start_replica "$primary_port"
one "replica on loopback, ack_replicas=0" 0
one "replica on loopback, ack_replicas=1" 1
kill -TERM "$replica_pid"; wait "$replica_pid" 2>/dev/null || true
start_replica "${proxy##*:}"
one "replica ${far_ms} ms away, ack_replicas=0" 0
one "replica ${far_ms} ms away, ack_replicas=1" 1

echo
echo "| 100 rooms x 10 over 2 edges, $rate msg/s per room spread, ${secs} s | deliveries; lost / duplicated | latency p50 / p99 / max (ms) | edge CPU-s per 1M deliveries | Redis CPU-s per 1M deliveries |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
