#!/usr/bin/env bash
# A local roomcast cluster in one command: its own redis-server, three edge
# nodes and the presence service, all on 127.0.0.1. Ctrl-C stops everything.
#
#   bash scripts/cluster.sh            # edges on :8001 :8002 :8003, presence on :8010
#   BASE_PORT=9000 bash scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BASE_PORT:-8000}
redis_port=${REDIS_PORT:-6390}
command -v redis-server >/dev/null || { echo "cluster.sh: redis-server is needed (apt-get install redis-server)" >&2; exit 1; }

cargo build --release -p roomcast-edge -p roomcast-presence
dir=$(mktemp -d)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup INT TERM EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --save "" --loglevel warning &
pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$redis_port/0" HOST=127.0.0.1
for i in 1 2 3; do
  PORT=$((base + i)) NODE_ID="edge-$i" ROOMCAST__PRESENCE__SWEEPER=false ./target/release/roomcast-edge &
  pids+=($!)
done
PORT=$((base + 10)) ./target/release/roomcast-presence &
pids+=($!)
for i in 1 2 3; do
  until curl -sf "http://127.0.0.1:$((base + i))/ready" >/dev/null; do sleep 0.2; done
done
echo
echo "roomcast cluster up: edges http://127.0.0.1:$((base + 1)) :$((base + 2)) :$((base + 3)), presence :$((base + 10)), redis :$redis_port"
echo "Ctrl-C to stop."
wait
