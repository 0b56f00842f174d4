# Shared by the benchmark scripts (sourced from the repository root):
# release builds, a temporary directory and the processes to stop on exit,
# free ports, reading a loadgen report, and starting an edge.
# EDGE=path runs another build of the edge (to compare two commits).

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p roomcast-edge -p roomcast-loadgen
edge=${EDGE:-target/release/roomcast-edge}
loadgen=target/release/roomcast-loadgen
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Starts an edge on Redis at $redis_url, limits out of the way, log in
# $tmp/NODE-ID.log; its pid in $started. (Not `$(start_edge)`: a command
# substitution waits for every process holding its stdout, the edge included.)
start_edge() { # port node-id [VAR=value ...]
  env REDIS_URL="$redis_url" NODE_ID="$2" PORT="$1" HOST=127.0.0.1 ENVIRONMENT=production \
  ALLOW_UNAUTHENTICATED=true \
  ROOMCAST__WEBSOCKET__RATE_PER_SEC=100000 ROOMCAST__WEBSOCKET__RATE_BURST=100000 \
  ROOMCAST__LIMITS__USER_FRAME_RATE_PER_SEC=100000 ROOMCAST__LIMITS__USER_FRAME_BURST=100000 \
  ROOMCAST__LIMITS__REST_RATE_PER_SEC=100000 ROOMCAST__LIMITS__REST_BURST=100000 \
  ROOMCAST__LIMITS__CONNECTIONS_PER_USER=1000000 ROOMCAST__LIMITS__CONNECTIONS_PER_ADDRESS=1000000 \
  ROOMCAST__SERVER__MAX_CONNECTIONS=200000 RUST_LOG=warn "${@:3}" "$edge" > "$tmp/$2.log" 2>&1 &
  started=$!
  pids+=("$started")
}
# Starts a redis-server without persistence; its port in $redis_port.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$tmp" --save "" --appendonly no \
    --loglevel warning > "$tmp/redis.log" 2>&1 &
  pids+=("$!")
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
}

# Starts roomcast-loadgen's delay proxy in front of $redis_port, each
# direction delayed $1 ms (there is no tc netem here); host:port in $proxy.
start_delay_proxy() { # delay-ms
  "$loadgen" delay-proxy --listen 127.0.0.1:0 --upstream "127.0.0.1:$redis_port" --delay-ms "$1" \
    > "$tmp/proxy.out" 2>&1 &
  pids+=("$!")
  until grep -q '^listening on' "$tmp/proxy.out" 2>/dev/null; do sleep 0.05; done
  proxy=$(sed -n 's/^listening on //p' "$tmp/proxy.out")
}

# CPU-seconds (user + system) a process has used; of several, summed; RSS in KiB.
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{ split($0, a, ") "); split(a[2], f, " "); printf "%.3f", (f[12] + f[13]) / t }' "/proc/$1/stat"; }
cpu_sum() { local s=0; for p in "$@"; do s=$(echo "$s + $(cpu_of "$p")" | bc -l); done; echo "$s"; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

wait_ready() { until curl -sf "http://127.0.0.1:$1/ready" >/dev/null; do sleep 0.1; done; }
