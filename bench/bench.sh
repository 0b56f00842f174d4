#!/usr/bin/env bash
# roomcast benchmark, one command: bash bench/bench.sh [--quick]
#
# Starts its own redis-server and roomcast-edge nodes (release builds) on
# 127.0.0.1, runs the standard scenarios with roomcast-loadgen on the same
# machine, samples each server's CPU time and RSS from /proc, and prints a
# table (plus bench/results/latest.jsonl with every loadgen report).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
# shellcheck source=bench/lib.sh
. bench/lib.sh
results=bench/results
mkdir -p "$results"
: > "$results/latest.jsonl"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$tmp" --appendonly yes --appendfsync everysec \
  --save "" --loglevel warning > "$tmp/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
redis_url="redis://127.0.0.1:$redis_port/0"

p1=$(free_port); p2=$(free_port); p3=$(free_port)
start_edge "$p1" bench-1; e1=$started
start_edge "$p2" bench-2; e2=$started
wait_ready "$p1"; wait_ready "$p2"
urls="http://127.0.0.1:$p1,http://127.0.0.1:$p2"

if [ "$quick" = "--quick" ]; then members=200; rate=50; secs=5; idle=2000; churn_c=200; churn_r=50
else members=1000; rate=100; secs=10; idle=10000; churn_c=1000; churn_r=200; fi

# fanout_run NAME URLS EDGE-PIDS... [-- EXTRA-PID]: 1 room x $members over the
# nodes at URLS; sets $fan (the report), $d_edges (the edges' CPU-seconds
# during publishing), $d_redis and $d_extra (the EXTRA-PID's, e.g. the hook
# receiver's).
fanout_run() {
  local name=$1 urls=$2; shift 2
  local edges=() extra=""
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then extra=$2; break; fi
    edges+=("$1"); shift
  done
  rm -f "$tmp/fan-ready" "$tmp/fan-done"
  # Server CPU is sampled over the publishing window only (joins and the
  # teardown announce presence to the whole room, which is not fan-out).
  "$loadgen" fanout --urls "$urls" --auto --rooms 1 --members "$members" --publishers 1 --rate "$rate" \
    --duration "$secs" --drain 1 --ready-file "$tmp/fan-ready" --done-file "$tmp/fan-done" > "$tmp/$name.txt" &
  local lg=$!
  while [ ! -f "$tmp/fan-ready" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
  local c_edges c_redis c_extra=0
  c_edges=$(cpu_sum "${edges[@]}"); c_redis=$(cpu_of "$redis_pid")
  [ -n "$extra" ] && c_extra=$(cpu_of "$extra")
  while [ ! -f "$tmp/fan-done" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
  d_edges=$(echo "$(cpu_sum "${edges[@]}") - $c_edges" | bc -l); d_redis=$(echo "$(cpu_of "$redis_pid") - $c_redis" | bc -l)
  d_extra=0; [ -n "$extra" ] && d_extra=$(echo "$(cpu_of "$extra") - $c_extra" | bc -l)
  wait "$lg" || true
  cat "$tmp/$name.txt"
  fan=$(tail -1 "$tmp/$name.txt"); echo "$fan" >> "$results/latest.jsonl"
}

echo "== fanout: 1 room x $members members over 2 nodes, 1 publisher at $rate msg/s, ${secs}s"
fanout_run fanout "$urls" "$e1" "$e2"
delivered=$(json "$fan" deliveries_received)
per_million_edges=$(echo "$d_edges * 1000000 / $delivered" | bc -l)
per_million_redis=$(echo "$d_redis * 1000000 / $delivered" | bc -l)
plain=$fan

echo "== fanout with the publish hook: the same, every message first POSTed to a trivial local receiver"
"$loadgen" hook-receiver --listen 127.0.0.1:0 > "$tmp/receiver.out" 2>&1 &
receiver=$!
pids+=("$receiver")
until grep -q '^listening on' "$tmp/receiver.out" 2>/dev/null; do sleep 0.05; done
hook_url="http://$(sed -n 's/^listening on //p' "$tmp/receiver.out")/publish"
ph1=$(free_port); ph2=$(free_port)
start_edge "$ph1" bench-h1 ROOMCAST__HOOKS__PUBLISH_URL="$hook_url"; h1=$started
start_edge "$ph2" bench-h2 ROOMCAST__HOOKS__PUBLISH_URL="$hook_url"; h2=$started
wait_ready "$ph1"; wait_ready "$ph2"
fanout_run fanout-hook "http://127.0.0.1:$ph1,http://127.0.0.1:$ph2" "$h1" "$h2" -- "$receiver"
hooked=$fan
hook_delivered=$(json "$hooked" deliveries_received)
hook_per_million_edges=$(echo "$d_edges * 1000000 / $hook_delivered" | bc -l)
hook_receiver_cpu=$d_extra
hook_calls=0
for port in "$ph1" "$ph2"; do
  n=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^roomcast_hook_calls_total\{hook="publish",outcome="accept"\}/ { print $2 }')
  hook_calls=$((hook_calls + ${n:-0}))
done
kill -TERM "$h1" "$h2" 2>/dev/null || true
fan=$plain

echo "== floor: the kernel's cost of the same writes, no server ($((members / 2)) sockets, $rate rounds/s)"
"$loadgen" floor --connections $((members / 2)) --rate "$rate" --duration $((secs * 2)) --size 200 | tee "$tmp/floor.txt"
flr=$(tail -1 "$tmp/floor.txt"); echo "$flr" >> "$results/latest.jsonl"

# Starts an edge on the embedded backend (no Redis); its pid in $started.
start_embedded() { # port node-id
  NODE_ID="$2" PORT="$1" HOST=127.0.0.1 ENVIRONMENT=production ROOMCAST__SERVER__MAX_CONNECTIONS=200000 \
  ALLOW_UNAUTHENTICATED=true ROOMCAST__LIMITS__CONNECTIONS_PER_USER=1000000 \
  ROOMCAST__LIMITS__CONNECTIONS_PER_ADDRESS=1000000 ROOMCAST__LIMITS__REST_RATE_PER_SEC=100000 \
  ROOMCAST__LIMITS__REST_BURST=100000 ROOMCAST__LIMITS__USER_FRAME_RATE_PER_SEC=100000 \
  ROOMCAST__LIMITS__USER_FRAME_BURST=100000 \
  RUST_LOG=warn "$edge" > "$tmp/$2.log" 2>&1 &
  started=$!
  pids+=("$started")
}

# idle RUN-NAME PORT PID IN-FLIGHT: $idle connections held on one node; sets
# $per_conn (RSS bytes per connection) and appends the report.
idle_run() {
  local name=$1 port=$2 pid=$3 inflight=$4
  echo "== idle ($name): $idle connections on one node, $inflight handshakes in flight"
  sleep 1
  local rss0; rss0=$(rss_kib "$pid")
  rm -f "$tmp/ready"
  "$loadgen" idle --urls "http://127.0.0.1:$port" --auto --connections "$idle" --room-size 10 --hold 4 \
    --connect-concurrency "$inflight" --ready-file "$tmp/ready" > "$tmp/idle-$name.txt" &
  local lg=$!
  while [ ! -f "$tmp/ready" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.1; done
  sleep 2
  local rss1; rss1=$(rss_kib "$pid")
  wait "$lg" || true
  cat "$tmp/idle-$name.txt"
  tail -1 "$tmp/idle-$name.txt" >> "$results/latest.jsonl"
  per_conn=$(echo "($rss1 - $rss0) * 1024 / $idle" | bc -l)
}
# A fresh node per run: RSS is measured from an idle baseline.
p3=$(free_port); start_edge "$p3" bench-3; e3=$started; wait_ready "$p3"
idle_run redis-256 "$p3" "$e3" 256; idl=$(tail -1 "$tmp/idle-redis-256.txt"); per_conn_redis=$per_conn
p4=$(free_port); start_edge "$p4" bench-4; wait_ready "$p4"
idle_run redis-64 "$p4" "$started" 64; idl64=$(tail -1 "$tmp/idle-redis-64.txt")
p5=$(free_port); start_embedded "$p5" bench-5; wait_ready "$p5"
idle_run embedded-64 "$p5" "$started" 64; emb=$(tail -1 "$tmp/idle-embedded-64.txt"); per_conn_embedded=$per_conn

if [ "$quick" = "--quick" ]; then mr_conns=1000; mr_rooms=200; mr_k=10; mr_rate=50
else mr_conns=5000; mr_rooms=1000; mr_k=20; mr_rate=100; fi
echo "== multiroom: $mr_conns multiplexed sockets x $mr_k rooms each (of $mr_rooms) on one node, $mr_rate msg/s in all"
pm=$(free_port); start_edge "$pm" bench-mr; emr=$started; wait_ready "$pm"
sleep 1
rss0=$(rss_kib "$emr")
rm -f "$tmp/mr-ready" "$tmp/mr-pub" "$tmp/mr-done"
"$loadgen" multiroom --urls "http://127.0.0.1:$pm" --auto --connections "$mr_conns" --rooms "$mr_rooms" \
  --rooms-per-conn "$mr_k" --rate "$mr_rate" --duration "$secs" --drain 1 --connect-concurrency 64 \
  --ready-file "$tmp/mr-ready" --publish-file "$tmp/mr-pub" --done-file "$tmp/mr-done" > "$tmp/multiroom.txt" &
lg=$!
while [ ! -f "$tmp/mr-ready" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
rss1=$(rss_kib "$emr")
while [ ! -f "$tmp/mr-pub" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
c_mr=$(cpu_of "$emr")
while [ ! -f "$tmp/mr-done" ] && kill -0 "$lg" 2>/dev/null; do sleep 0.05; done
d_mr=$(echo "$(cpu_of "$emr") - $c_mr" | bc -l)
wait "$lg" || true
cat "$tmp/multiroom.txt"
mr=$(tail -1 "$tmp/multiroom.txt"); echo "$mr" >> "$results/latest.jsonl"
mr_per_conn=$(echo "($rss1 - $rss0) * 1024 / $mr_conns" | bc -l)
mr_per_sub=$(echo "($rss1 - $rss0) * 1024 / ($mr_conns * $mr_k)" | bc -l)
mr_cpu=$(echo "$d_mr * 1000000 / $(json "$mr" deliveries_received)" | bc -l)
kill -TERM "$emr" 2>/dev/null || true

echo "== churn: $churn_c connections over 2 nodes, ~$churn_r connects/s, ${secs}s, with traffic"
"$loadgen" churn --urls "$urls" --auto --connections "$churn_c" --rate "$churn_r" --duration "$secs" --msg-rate 50 \
  | tee "$tmp/churn.txt"
chn=$(tail -1 "$tmp/churn.txt"); echo "$chn" >> "$results/latest.jsonl"

cat <<TABLE

| metric | value |
|---|---|
| fan-out: delivered messages/s (1 room x $members, 2 nodes) | $(json "$fan" deliveries_per_second) |
| fan-out: lost / duplicated / out of order | $(json "$fan" lost) / $(json "$fan" duplicated) / $(json "$fan" out_of_order) |
| fan-out latency p50 / p90 / p99 / p99.9 / max (ms) | $(json "$fan" latency_p50_ms) / $(json "$fan" latency_p90_ms) / $(json "$fan" latency_p99_ms) / $(json "$fan" latency_p999_ms) / $(json "$fan" latency_max_ms) |
| edge CPU-seconds per million deliveries | $(printf %.3f "$per_million_edges") |
| with the publish hook: delivered messages/s; lost / duplicated / out of order | $(json "$hooked" deliveries_per_second); $(json "$hooked" lost) / $(json "$hooked" duplicated) / $(json "$hooked" out_of_order) |
| with the publish hook: latency p50 / p99 / max (ms) | $(json "$hooked" latency_p50_ms) / $(json "$hooked" latency_p99_ms) / $(json "$hooked" latency_max_ms) |
| with the publish hook: edge CPU-seconds per million deliveries (receiver's own CPU, s; hook calls accepted) | $(printf %.3f "$hook_per_million_edges") ($(printf %.2f "$hook_receiver_cpu"); $hook_calls) |
| floor: kernel CPU-seconds per million 200-byte loopback writes (no server, same pattern) | $(json "$flr" cpu_seconds_per_million_writes) |
| redis CPU-seconds per million deliveries | $(printf %.3f "$per_million_redis") |
| load generator CPU during fan-out (cores) | $(json "$fan" loadgen_cpu_cores) |
| idle: RSS per connection ($idle on one node), Redis / embedded backend | $(printf %.0f "$per_conn_redis") / $(printf %.0f "$per_conn_embedded") bytes |
| idle: connects/s, handshake p50 / p99 (ms), Redis backend, 256 in flight | $(json "$idl" connects_per_second), $(json "$idl" handshake_p50_ms) / $(json "$idl" handshake_p99_ms) |
| idle: connects/s, handshake p50 / p99 (ms), Redis backend, 64 in flight | $(json "$idl64" connects_per_second), $(json "$idl64" handshake_p50_ms) / $(json "$idl64" handshake_p99_ms) |
| idle: connects/s, handshake p50 / p99 (ms), embedded backend, 64 in flight | $(json "$emb" connects_per_second), $(json "$emb" handshake_p50_ms) / $(json "$emb" handshake_p99_ms) |
| multiroom: $mr_conns sockets x $mr_k rooms (one node): RSS per socket / per subscription | $(printf %.0f "$mr_per_conn") / $(printf %.0f "$mr_per_sub") bytes |
| multiroom: subscriptions/s while connecting; deliveries/s; lost / duplicated / out of order | $(json "$mr" subscriptions_per_second); $(json "$mr" deliveries_per_second); $(json "$mr" lost) / $(json "$mr" duplicated) / $(json "$mr" out_of_order) |
| multiroom: latency p50 / p99 (ms); edge CPU-seconds per million deliveries | $(json "$mr" latency_p50_ms) / $(json "$mr" latency_p99_ms); $(printf %.3f "$mr_cpu") |
| churn: connects/s achieved (target $churn_r), handshake p99 (ms), failures | $(json "$chn" connects_per_second), $(json "$chn" handshake_p99_ms), $(json "$chn" failures) |
TABLE
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
