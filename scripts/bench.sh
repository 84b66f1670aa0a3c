#!/usr/bin/env bash
# baton benchmark suite: baton against a direct connection, nginx and HAProxy, all on 127.0.0.1.
#
#   scripts/bench.sh            full run (~8 min plus builds): bench/results.{md,json,png}
#   scripts/bench.sh --smoke    a fraction of a second to ~1 s per scenario, minimal counts, proves the harness end
#                               to end (< 2 min with warm builds); results in target/bench/smoke/
#
# Run from anywhere as root (scripts/deps.sh installs missing Debian packages: nginx, libnginx-mod-stream, haproxy,
# wrk, nghttp2-client, curl, jq, fonts-dejavu-core), no stdin needed. Every proxy gets ONE worker/thread in front of
# one nginx upstream (worker_processes 1, `return 200 "ok\n"`; for gRPC the one-thread grpcserver); every load
# generator runs one thread; nothing is pinned. Scenarios:
#   1 HTTP/1.1 keep-alive   wrk -t1 -c32, throughput and p50/p99/p99.9: direct, baton, nginx, HAProxy
#   2 HTTP/1.1 new conn     the same with "Connection: close" on every request
#   3 h2c                   h2load (prior knowledge) direct, baton, nginx, HAProxy (each with an h2c listener)
#  3b h2c -> h2c upstream   the same h2load run, each proxy speaking HTTP/2 (prior knowledge) to the upstream's h2c
#                           port: baton `protocol: h2c` cluster, nginx `grpc_pass`, HAProxy `proto h2`
#  3c gRPC unary            bench/tools grpcload (checks every answer: grpc-status 0 in the trailers) against
#                           bench/tools grpcserver, direct and through the same three HTTP/2 upstream setups
#   4 TCP relay             one bulk stream (bench/tools tcpbulk) direct, through baton, nginx stream, HAProxy
#  4b TCP relay, fixed rate the same stream paced at 1 Gbit/s: the proxy's CPU per GB relayed
#   5 upgrades under load   20 upgrades in 10 s under each of three clients: wrk keep-alive, wrk new connection,
#                           an idle keep-alive pool (bench/tools idlepool: 100 connections, each used once every
#                           300 ms, no retry); baton handoffs driven like examples/demo.rs, nginx `kill -HUP`,
#                           HAProxy master-worker seamless reload; failed requests per 100 upgrades
#   6 handoff latency       50 baton upgrades: start of the new process -> it answers on the inherited sockets,
#                           and when `baton migrate` returns
#   7 memory                VmRSS of baton idle and under load, of the empty-slot placeholder, of the peers
#   8 fixed request rate    bench/tools fixedrate (open loop, latency from each request's due time: no coordinated
#                           omission) at 2k, 10k and 30k req/s over 64 keep-alive connections: the latency each
#                           proxy adds to direct (p50, p99, p99.9), and the proxy's CPU per request at 10k req/s
#   9 10,000 connections    10,000 idle keep-alive connections (bench/tools holdconns): RSS of each proxy holding
#                           them; a baton upgrade hands all of them over (commit -> last acknowledged, none lost,
#                           the next request on each one answered)
#  10 two workers           scenario 1 (-c128) and 8 with baton --workers 2, nginx worker_processes 2, HAProxy
#                           nbthread 2
# The table (bench/chart renders it, with the chart) says "met" or "MISSED" for each target. Missed targets never
# fail the run: the exit code is non-zero only when the harness itself breaks (a tool missing after install,
# a process that does not start, output that does not parse).
set -euo pipefail

MODE=full
case "${1:-}" in
  "") ;;
  --smoke) MODE=smoke ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
START_S=$SECONDS

if [[ $MODE == full ]]; then
  WARMUP=1 DUR=2            # seconds: warm-up run, measured run (scenarios 1-3c)
  ROUNDS=3                  # scenarios 1, 2, 4, 4b, 8, 10: measured runs per target, interleaved; medians reported
  TCP_SECS=2 TCP_WARM=0.5   # scenario 4
  TCP_RATE_SECS=2           # scenario 4b, per run (after TCP_WARM)
  UPG_COUNT=20 UPG_SPAN=10  # scenario 5: upgrades within UPG_SPAN seconds
  IDLE_PRE=1 IDLE_TAIL=2 IDLE_SETTLE=1 # scenario 5, idle pool: seconds before the first upgrade, after the span
  HANDOFF_COUNT=50 HANDOFF_GAP_MS=100
  FR_SECS=2 FR_WARM=0.3     # scenarios 8 and 10: measured seconds per fixed-rate run, after a warm-up
  MANY_CONNS=10000          # scenario 9
  OUT_DIR=$ROOT/bench
else
  WARMUP=0 DUR=1 ROUNDS=1
  TCP_SECS=1 TCP_WARM=0.2 TCP_RATE_SECS=0.3
  UPG_COUNT=2 UPG_SPAN=1
  IDLE_PRE=0.3 IDLE_TAIL=0.5 IDLE_SETTLE=0.3
  HANDOFF_COUNT=3 HANDOFF_GAP_MS=100
  FR_SECS=0.3 FR_WARM=0.1
  MANY_CONNS=1000
  OUT_DIR=$ROOT/target/bench/smoke
fi
CONNS=32               # wrk connections
WIDE_CONNS=128         # scenario 1, second run: enough connections to keep every proxy busy; scenario 10
H2_CONNS=16 H2_STREAMS=16
IDLE_CONNS=100 IDLE_ROUND_MS=300 # scenario 5 idle pool: keep-alive connections, each used once per round
IDLE_LOAD_S=$(awk -v a="$IDLE_PRE" -v b="$UPG_SPAN" -v c="$IDLE_TAIL" 'BEGIN { print a + b + c }')
FR_RATES=(2000 10000 30000) # scenario 8: requests per second
FR_CONNS=64            # scenarios 8 and 10: keep-alive connections of the fixed-rate client
FR_CPU_RATE=10000      # scenario 8: the rate whose runs give the CPU per request
FR2_RATES=(10000 30000) # scenario 10: fixed rates with two workers
TCP_RATE_GBIT=1        # scenario 4b
DRAIN=2s               # baton handoff.drain_timeout in the upgrade scenarios

log() { printf '[%4ds] %s\n' "$((SECONDS - START_S))" "$*"; }
die() {
  printf 'bench: HARNESS ERROR: %s\n' "$*" >&2
  local f
  for f in "$TMP"/logs/*.log "$TMP"/*/error.log; do
    case $f in */build.log | */wrk-*.log | */h2load-*.log) continue ;; esac
    [[ -s $f ]] || continue
    printf -- '--- %s (last lines)\n' "${f#"$TMP"/}" >&2
    tail -n 5 "$f" | sed 's/^/    /' >&2
  done
  exit 1
}

# ---------------------------------------------------------------------------------------------------------
# Processes and cleanup: every background process is recorded and stopped (TERM, then KILL) on any exit.

TMP=$(mktemp -d /tmp/baton-bench.XXXXXX)
PIDS=()

stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# forget PID: a process that has been waited for leaves the cleanup list (its pid may be reused).
forget() {
  local i
  for i in "${!PIDS[@]}"; do
    [[ ${PIDS[$i]} == "$1" ]] && unset 'PIDS[i]'
  done
  PIDS=("${PIDS[@]}")
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$? i live
  trap - EXIT INT TERM
  # Only our own children still in the job table: never a pid that was reaped and reused.
  live=" $(jobs -p | tr '\n' ' ') "
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    [[ $live == *" ${PIDS[$i]} "* ]] && stop_pid "${PIDS[$i]}"
  done
  if [[ -n ${BENCH_KEEP:-} ]]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CMD...: starts CMD in the background, output in $TMP/logs/NAME.log; sets BG_PID.
start_bg() {
  local name=$1
  shift
  "$@" </dev/null >"$TMP/logs/$name.log" 2>&1 &
  BG_PID=$!
  PIDS+=("$BG_PID")
}

wait_port() { # PORT [what]
  local i
  for ((i = 0; i < 200; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "${2:-something} is not listening on 127.0.0.1:$1 (logs: ${3:-})"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# CPU time of PID so far, in ns: /proc/PID/schedstat (exact; the tick-sampled utime/stime of /proc/PID/stat
# undercount a process that sleeps and wakes thousands of times a second).
cpu_ns() { awk '{print $1}' "/proc/$1/schedstat" 2>/dev/null || echo 0; }

# The pid of the first child of $1 (the nginx / HAProxy worker).
child_of() {
  local f
  for f in /proc/[0-9]*/status; do
    if grep -q "^PPid:[[:space:]]*$1\$" "$f" 2>/dev/null; then
      f=${f#/proc/}
      echo "${f%/status}"
      return 0
    fi
  done
  return 1
}

# ---------------------------------------------------------------------------------------------------------
# Tools

# The Debian packages (nginx, libnginx-mod-stream, haproxy, wrk, nghttp2-client, curl, jq, fonts-dejavu-core):
# scripts/deps.sh installs the missing ones as root, or says what to install, and checks them afterwards.
bash "$ROOT/scripts/deps.sh" bench || die "the Debian packages the bench needs are missing (see above)"
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

log "building (release)"
mkdir -p "$TMP/logs" "$OUT_DIR"
build() { # in the background, so that a signal stops the run at once (bash defers traps while a foreground job runs)
  "$CARGO" build --release --locked "$@" >>"$TMP/logs/build.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  if ! wait "$pid"; then
    tail -30 "$TMP/logs/build.log" >&2
    die "cargo build $* failed"
  fi
  forget "$pid"
}
build --bins --examples
build --manifest-path images/empty/Cargo.toml
# The static placeholder exactly as scripts/image.sh builds it for the image (FROM scratch).
HOST=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" build --target "$HOST" --manifest-path images/empty/Cargo.toml
build --manifest-path bench/tools/Cargo.toml --target-dir target/bench
build --manifest-path bench/chart/Cargo.toml --target-dir target/bench
BATON=$ROOT/target/release/baton
EMPTY=$ROOT/images/empty/target/release/baton-empty
EMPTY_STATIC=$ROOT/images/empty/target/$HOST/release/baton-empty
TOOLS=$ROOT/target/bench/release
CHART=$TOOLS/baton-bench-chart
for f in "$BATON" "$EMPTY" "$EMPTY_STATIC" "$TOOLS/freeports" "$TOOLS/tcpbulk" "$TOOLS/idlepool" "$TOOLS/upgrader" \
  "$TOOLS/grpcserver" "$TOOLS/grpcload" "$TOOLS/fixedrate" "$TOOLS/holdconns" "$CHART"; do
  [[ -x $f ]] || die "$f was not built"
done
BUILD_S=$((SECONDS - START_S))

BATON_ARGS=()
if "$BATON" run --help 2>/dev/null | grep -q -- '--workers'; then
  BATON_ARGS=(--workers 1)
  WORKERS_NOTE="1 (--workers 1)"
else
  WORKERS_NOTE="default: one per CPU (this baton has no --workers flag)"
  log "NOTE: baton run has no --workers flag: baton runs with its default thread count"
fi
# The Kruise and baton variables must not leak in from the caller.
BATON_ENV=(env -u SIDECARSET_VERSION -u SIDECARSET_VERSION_ALT -u BATON_CONFIG -u BATON_UDS_DIR -u BATON_WORKERS
  -u BATON_FAILPOINT NO_COLOR=1 RUST_LOG=info)

# ---------------------------------------------------------------------------------------------------------
# results.json, built up as we go

RESULTS=$TMP/results.json
echo '{}' >"$RESULTS"
put() { # JQ_PATH JSON
  jq --argjson v "$2" "$1 = \$v" "$RESULTS" >"$RESULTS.new" 2>"$TMP/jq.err" ||
    die "not JSON for $1: ${2:0:300} ($(cat "$TMP/jq.err"))"
  mv "$RESULTS.new" "$RESULTS"
}
put_str() { put "$1" "$(jq -n --arg v "$2" '$v')"; }

put_str .mode "$MODE"
put_str .machine.date "$(date -u '+%Y-%m-%d %H:%M UTC')"
put .machine.nproc "$(nproc)"
put_str .machine.cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
put_str .machine.kernel "$(uname -sr)"
put_str .machine.loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
put_str .machine.baton_version "$("$BATON" --version 2>&1 | head -1)"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if git -C "$ROOT" status --porcelain 2>/dev/null | grep -q .; then commit+=" (uncommitted changes)"; fi
put_str .machine.git "$commit"
put_str .machine.baton_workers "$WORKERS_NOTE"
put_str .machine.tools.nginx "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
put_str .machine.tools.haproxy "$(haproxy -v 2>&1 | head -1 | awk '{print $3}')"
put_str .machine.tools.wrk "$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
put_str .machine.tools.h2load "$(h2load --version 2>&1 | head -1 | awk '{print $2}')"
put .params.upgrades "$UPG_COUNT"
put .params.upgrade_span_s "$UPG_SPAN"
put .params.handoff_count "$HANDOFF_COUNT"
put .params.idle_conns "$IDLE_CONNS"
put .params.wide_conns "$WIDE_CONNS"
put .params.idle_round_ms "$IDLE_ROUND_MS"
put .params.idle_load_s "$IDLE_LOAD_S"
put .params.fixed_rate_conns "$FR_CONNS"
put .params.many_conns "$MANY_CONNS"
put_str .params.description "Load: wrk -t1 -c$CONNS (keep-alive also -c$WIDE_CONNS), ${WARMUP} s warm-up + ${DUR} s measured, HTTP/1.1 scenarios: median of $ROUNDS interleaved rounds; h2load -t1 -c$H2_CONNS -m$H2_STREAMS for ${DUR} s (h2c, and h2c to an h2c upstream), gRPC unary: grpcload $H2_CONNS connections x $H2_STREAMS streams, one thread, for ${DUR} s; TCP: one stream for ${TCP_SECS} s after ${TCP_WARM} s, median of $ROUNDS interleaved rounds. Upgrades: $UPG_COUNT in $UPG_SPAN s under wrk -c$CONNS (keep-alive, then Connection: close) and under an idle pool (idlepool: $IDLE_CONNS keep-alive connections, each used once every $IDLE_ROUND_MS ms, no retry, for $IDLE_LOAD_S s), baton handoff.drain_timeout $DRAIN; handoff latency over $HANDOFF_COUNT upgrades without load, ${HANDOFF_GAP_MS} ms apart. Fixed rate: bench/tools fixedrate (open loop) at ${FR_RATES[*]} req/s over $FR_CONNS keep-alive connections, ${FR_WARM} s + ${FR_SECS} s per run, $ROUNDS interleaved rounds, medians; TCP at a fixed $TCP_RATE_GBIT Gbit/s: ${TCP_RATE_SECS} s per run after ${TCP_WARM} s, $ROUNDS rounds; $MANY_CONNS idle keep-alive connections (holdconns) per proxy and through one baton upgrade. Every proxy: 1 worker (scenario 10: 2); upstream: nginx, 1 worker (gRPC: grpcserver, 1 thread). Loopback only, nothing pinned."

# ---------------------------------------------------------------------------------------------------------
# Ports, configs, processes

# Free ephemeral ports, taken right before they are bound (the upgrade scenarios take theirs when they start).
read -r UP UP_H2 SINK BATON_HTTP BATON_TCP BATON_ADMIN NGX NGX_H2 NGX_TCP HAP HAP_H2 HAP_TCP \
  GRPC_UP BATON_H2UP BATON_GRPC NGX_H2UP NGX_GRPC HAP_H2UP HAP_GRPC <<<"$("$TOOLS/freeports" 19)"
[[ -n ${HAP_GRPC:-} ]] || die "freeports did not print 19 ports"

nginx_common() { # DIR
  cat <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
EOF
}
nginx_http_common() { # DIR
  cat <<EOF
  access_log off;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  default_type text/plain;
EOF
}

# nginx's reverse proxy to the HTTP/1.1 upstream (inside `http { }`): an `app` upstream block with kept-alive
# connections and a server listening on each argument (`ADDR:PORT`, or `ADDR:PORT http2`).
nginx_proxy_app() { # LISTEN...
  echo "  upstream app { server 127.0.0.1:$UP; keepalive 256; keepalive_requests 100000000; }"
  echo "  server {"
  local l
  for l in "$@"; do echo "    listen $l;"; done
  cat <<'EOF'
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
EOF
}

# Upstream: nginx, HTTP/1.1 on UP and h2c (prior knowledge, `listen ... http2` on a plain port) on UP_H2; on UP_H2
# /proto answers with the protocol and method it got, for the sanity check of the HTTP/2 upstream paths.
mkdir -p "$TMP/upstream/tmp" "$TMP/nginx/tmp" "$TMP/haproxy" "$TMP/uds-static"
{
  nginx_common "$TMP/upstream"
  echo "http {"
  nginx_http_common "$TMP/upstream"
  cat <<EOF
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
  server {
    listen 127.0.0.1:$UP_H2 http2;
    location / { return 200 "ok\n"; }
    location = /proto { return 200 "\$server_protocol \$request_method\n"; }
  }
}
EOF
} >"$TMP/upstream/nginx.conf"
nginx -t -q -c "$TMP/upstream/nginx.conf" -p "$TMP/upstream" -e "$TMP/upstream/error.log" 2>"$TMP/logs/nginx-t.log" ||
  die "upstream nginx config: $(cat "$TMP/logs/nginx-t.log")"
start_bg upstream nginx -c "$TMP/upstream/nginx.conf" -p "$TMP/upstream" -e "$TMP/upstream/error.log"

# The gRPC upstream: bench/tools grpcserver (h2c, one thread, helloworld.Greeter/SayHello).
start_bg grpc-upstream "$TOOLS/grpcserver" --listen "127.0.0.1:$GRPC_UP"

# nginx as the reverse proxy: HTTP/1.1 on NGX, h2c on NGX_H2, TCP relay (stream) on NGX_TCP. HTTP/2 to an
# upstream: nginx 1.22 has it only in the gRPC module, and `grpc_pass` proxies any request, plain GETs too, so
# NGX_H2UP (to the nginx upstream's h2c port) and NGX_GRPC (to grpcserver) both use it: one upstream connection per
# request in flight (no multiplexing), kept for reuse by `keepalive`.
{
  echo "load_module $STREAM_MODULE;"
  nginx_common "$TMP/nginx"
  echo "http {"
  nginx_http_common "$TMP/nginx"
  nginx_proxy_app "127.0.0.1:$NGX" "127.0.0.1:$NGX_H2 http2"
  cat <<EOF
  upstream h2app { server 127.0.0.1:$UP_H2; keepalive 256; keepalive_requests 100000000; }
  upstream grpcapp { server 127.0.0.1:$GRPC_UP; keepalive 256; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGX_H2UP http2;
    location / { grpc_pass grpc://h2app; grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; }
  }
  server {
    listen 127.0.0.1:$NGX_GRPC http2;
    location / { grpc_pass grpc://grpcapp; grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; }
  }
}
stream { server { listen 127.0.0.1:$NGX_TCP; proxy_pass 127.0.0.1:$SINK; proxy_half_close on; } }
EOF
} >"$TMP/nginx/nginx.conf"
nginx -t -q -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -e "$TMP/nginx/error.log" 2>"$TMP/logs/nginx-t.log" ||
  die "proxy nginx config: $(cat "$TMP/logs/nginx-t.log")"
start_bg nginx nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -e "$TMP/nginx/error.log"
NGINX_PID=$BG_PID

# HAProxy: master-worker (-W, master CLI -S), one thread, stats socket exposing the listeners for seamless
# reloads (in master-worker mode the master hands the listeners to the new worker itself on `kill -USR2`).
# HTTP/2 to an upstream: `server ... proto h2` (streams multiplexed on shared connections, `http-reuse always`).
cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
  stats socket $TMP/haproxy/stats.sock mode 600 level admin expose-fd listeners
  hard-stop-after 15s
defaults
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend fe
  mode http
  option http-keep-alive
  option forwardfor
  bind 127.0.0.1:$HAP
  bind 127.0.0.1:$HAP_H2 proto h2
  default_backend be
backend be
  mode http
  option http-keep-alive
  http-reuse always
  server up 127.0.0.1:$UP
frontend fe_h2up
  mode http
  option forwardfor
  bind 127.0.0.1:$HAP_H2UP proto h2
  default_backend be_h2up
backend be_h2up
  mode http
  http-reuse always
  server up_h2 127.0.0.1:$UP_H2 proto h2
frontend fe_grpc
  mode http
  option forwardfor
  bind 127.0.0.1:$HAP_GRPC proto h2
  default_backend be_grpc
backend be_grpc
  mode http
  http-reuse always
  server grpc 127.0.0.1:$GRPC_UP proto h2
listen tcp_relay
  mode tcp
  bind 127.0.0.1:$HAP_TCP
  server sink 127.0.0.1:$SINK
EOF
haproxy -c -q -f "$TMP/haproxy/haproxy.cfg" >"$TMP/logs/haproxy-c.log" 2>&1 ||
  die "haproxy config: $(cat "$TMP/logs/haproxy-c.log")"
start_bg haproxy haproxy -W -S "$TMP/haproxy/master.sock" -f "$TMP/haproxy/haproxy.cfg"
HAPROXY_PID=$BG_PID

start_bg sink "$TOOLS/tcpbulk" sink --listen "127.0.0.1:$SINK"

# baton, fresh (no Kruise env), one worker: http + tcp listeners and admin; two more http listeners whose clusters
# speak HTTP/2 upstream (`protocol: h2c`): to the nginx upstream's h2c port and to grpcserver.
cat >"$TMP/baton.yaml" <<EOF
listeners:
  - name: http
    address: 127.0.0.1:$BATON_HTTP
    protocol: http
    cluster: app
  - name: tcp
    address: 127.0.0.1:$BATON_TCP
    protocol: tcp
    cluster: sink
  - name: h2up
    address: 127.0.0.1:$BATON_H2UP
    protocol: http
    cluster: app_h2
  - name: grpc
    address: 127.0.0.1:$BATON_GRPC
    protocol: http
    cluster: grpc
clusters:
  - name: app
    endpoints: ["127.0.0.1:$UP"]
  - name: sink
    endpoints: ["127.0.0.1:$SINK"]
  - name: app_h2
    endpoints: ["127.0.0.1:$UP_H2"]
    protocol: h2c
  - name: grpc
    endpoints: ["127.0.0.1:$GRPC_UP"]
    protocol: h2c
admin:
  address: 127.0.0.1:$BATON_ADMIN
handoff:
  uds_dir: $TMP/uds-static
EOF
"$BATON" check --config "$TMP/baton.yaml" >"$TMP/logs/baton-check.log" 2>&1 ||
  die "baton check rejected the bench config: $(cat "$TMP/logs/baton-check.log")"
start_bg baton "${BATON_ENV[@]}" "$BATON" run --config "$TMP/baton.yaml" "${BATON_ARGS[@]}"
BATON_PID=$BG_PID

for p in "$UP:upstream nginx" "$UP_H2:upstream nginx h2c" "$SINK:tcp sink" "$NGX:nginx" "$NGX_H2:nginx h2c" \
  "$NGX_TCP:nginx stream" "$HAP:haproxy" "$HAP_H2:haproxy h2c" "$HAP_TCP:haproxy tcp" "$BATON_HTTP:baton" \
  "$BATON_TCP:baton tcp" "$BATON_ADMIN:baton admin" "$GRPC_UP:grpcserver" "$BATON_H2UP:baton h2c upstream" \
  "$BATON_GRPC:baton grpc" "$NGX_H2UP:nginx h2c upstream" "$NGX_GRPC:nginx grpc" "$HAP_H2UP:haproxy h2c upstream" \
  "$HAP_GRPC:haproxy grpc"; do
  wait_port "${p%%:*}" "${p#*:}" "$TMP/logs"
done
NGINX_WORKER=$(child_of "$NGINX_PID") || die "no nginx worker process"
HAPROXY_WORKER=$(child_of "$HAPROXY_PID") || die "no HAProxy worker process"

# Sanity: every path answers "ok" over HTTP/1.1 and h2c; the HTTP/2 upstream paths reach the upstream over
# HTTP/2; gRPC calls through every path succeed (grpcload checks each answer down to grpc-status 0).
check_body() { # WHAT EXPECTED CURL_ARGS...
  local what=$1 want=$2 body
  shift 2
  body=$(curl -sS --max-time 5 "$@" 2>&1) || die "$what: curl failed: $body"
  [[ $body == "$want" ]] || die "$what answered ${body:0:200} instead of $want"
}
check_ok() { # WHAT CURL_ARGS...
  local what=$1
  shift
  check_body "$what" ok "$@"
}
check_grpc() { # WHAT ADDR
  local out
  out=$("$TOOLS/grpcload" --target "$2" --calls 64 --conns 2 --streams 8 --timeout-ms 5000 2>&1) ||
    die "$1: gRPC calls failed: $(tail -1 <<<"$out")"
}
check_ok direct "http://127.0.0.1:$UP/"
check_ok baton "http://127.0.0.1:$BATON_HTTP/"
check_ok nginx "http://127.0.0.1:$NGX/"
check_ok haproxy "http://127.0.0.1:$HAP/"
check_ok "direct h2c" --http2-prior-knowledge "http://127.0.0.1:$UP_H2/"
check_ok "baton h2c" --http2-prior-knowledge "http://127.0.0.1:$BATON_HTTP/"
check_ok "nginx h2c" --http2-prior-knowledge "http://127.0.0.1:$NGX_H2/"
check_ok "haproxy h2c" --http2-prior-knowledge "http://127.0.0.1:$HAP_H2/"
for p in "baton:$BATON_H2UP" "nginx:$NGX_H2UP" "haproxy:$HAP_H2UP"; do
  check_ok "${p%%:*} h2c to the h2c upstream" --http2-prior-knowledge "http://127.0.0.1:${p#*:}/"
  check_body "${p%%:*} h2c to the h2c upstream, protocol upstream" "HTTP/2.0 GET" --http2-prior-knowledge \
    "http://127.0.0.1:${p#*:}/proto"
done
for p in "direct:$GRPC_UP" "baton:$BATON_GRPC" "nginx:$NGX_GRPC" "haproxy:$HAP_GRPC"; do
  check_grpc "${p%%:*} gRPC" "127.0.0.1:${p#*:}"
done
log "upstream, sink, baton (pid $BATON_PID), nginx (worker $NGINX_WORKER), HAProxy (worker $HAPROXY_WORKER) serving; built in ${BUILD_S} s"

# ---------------------------------------------------------------------------------------------------------
# 7 (idle part). Memory before any load.

sleep 0.5
put .memory_kib.baton_idle "$(rss_kib "$BATON_PID")"
put .memory_kib.nginx_idle "$(rss_kib "$NGINX_WORKER")"
put .memory_kib.haproxy_idle "$(rss_kib "$HAPROXY_WORKER")"
for kind in empty empty_static; do
  if [[ $kind == empty ]]; then bin=$EMPTY; else bin=$EMPTY_STATIC; fi
  start_bg "$kind" "$bin" run
  sleep 0.3
  kill -0 "$BG_PID" 2>/dev/null || die "$bin run exited at once"
  put ".memory_kib.$kind" "$(rss_kib "$BG_PID")"
  stop_pid "$BG_PID"
done
log "RSS idle: baton $(jq .memory_kib.baton_idle "$RESULTS") KiB; empty placeholder $(jq .memory_kib.empty "$RESULTS") KiB (static: $(jq .memory_kib.empty_static "$RESULTS") KiB)"

# ---------------------------------------------------------------------------------------------------------
# Load helpers

LUA=$ROOT/bench/wrk-report.lua

# wrk_json DURATION URL [wrk args...]: runs wrk, prints its WRKJSON object.
wrk_json() {
  local d=$1 url=$2 out
  shift 2
  out=$TMP/logs/wrk-$RANDOM.log
  wrk -t1 -c"${WRK_CONNS:-$CONNS}" -d"$d" --latency -s "$LUA" "$@" "$url" >"$out" 2>&1 || die "wrk $url failed: $(tail -5 "$out")"
  grep '^WRKJSON ' "$out" | tail -1 | sed 's/^WRKJSON //' | grep . || die "wrk printed no WRKJSON line: $(tail -5 "$out")"
}

# median_run FIELD FILE: of the JSON runs in FILE, the median one by FIELD, with every run's FIELD in FIELD_runs.
median_run() {
  jq -s --arg f "$1" 'sort_by(.[$f]) as $r | $r[(length / 2 | floor)] + {($f + "_runs"): [.[][$f]]}' "$2"
}

# sample_rss PID FILE: writes the peak VmRSS of PID to FILE until killed.
sample_rss() {
  local peak=0 v
  while kill -0 "$1" 2>/dev/null; do
    v=$(rss_kib "$1")
    ((v > peak)) && peak=$v && echo "$peak" >"$2"
    sleep 0.2
  done
}

declare -A HTTP_URL=([direct]="http://127.0.0.1:$UP/" [baton]="http://127.0.0.1:$BATON_HTTP/"
  [nginx]="http://127.0.0.1:$NGX/" [haproxy]="http://127.0.0.1:$HAP/")
declare -A H2_URL=([direct]="http://127.0.0.1:$UP_H2/" [baton]="http://127.0.0.1:$BATON_HTTP/"
  [nginx]="http://127.0.0.1:$NGX_H2/" [haproxy]="http://127.0.0.1:$HAP_H2/")
declare -A TCP_ADDR=([direct]="127.0.0.1:$SINK" [baton]="127.0.0.1:$BATON_TCP"
  [nginx]="127.0.0.1:$NGX_TCP" [haproxy]="127.0.0.1:$HAP_TCP")
declare -A MEM_PID=([baton]=$BATON_PID [nginx]=$NGINX_WORKER [haproxy]=$HAPROXY_WORKER)
TARGETS=(direct baton nginx haproxy)

# ---------------------------------------------------------------------------------------------------------
# 1 + 2. HTTP/1.1 keep-alive, then a new connection per request.

# Rounds interleave the targets (direct, baton, nginx, HAProxy, then again), so drift on the machine (other
# processes, frequency, page cache) hits all of them alike; each target's median run by req/s is reported, with
# every run's req/s in `rps_runs`.
# http1_keepalive_wide: keep-alive again with WIDE_CONNS connections. With CONNS on two cores the chain
# client -> proxy -> upstream is latency-bound and a lean proxy idles part of the time; with more connections in
# flight every proxy runs flat out, so it shows what each can carry.
for scenario in http1_keepalive http1_keepalive_wide http1_close; do
  extra=()
  export WRK_CONNS=$CONNS
  [[ $scenario == http1_close ]] && extra=(-H "Connection: close")
  [[ $scenario == http1_keepalive_wide ]] && WRK_CONNS=$WIDE_CONNS
  for t in "${TARGETS[@]}"; do rm -f "$TMP/runs-$scenario-$t"; done
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${TARGETS[@]}"; do
      ((WARMUP > 0 && round == 1)) && wrk_json "${WARMUP}s" "${HTTP_URL[$t]}" "${extra[@]}" >/dev/null
      sampler=
      if [[ $scenario == http1_keepalive && -n ${MEM_PID[$t]:-} ]]; then
        sample_rss "${MEM_PID[$t]}" "$TMP/rss-$t-$round" &
        sampler=$!
        PIDS+=("$sampler")
      fi
      # The proxy's own CPU per request (user + kernel), from /proc before and after the run.
      cpu0=$( [[ -n ${MEM_PID[$t]:-} ]] && cpu_ns "${MEM_PID[$t]}" || echo 0)
      run=$(wrk_json "${DUR}s" "${HTTP_URL[$t]}" "${extra[@]}")
      cpu1=$( [[ -n ${MEM_PID[$t]:-} ]] && cpu_ns "${MEM_PID[$t]}" || echo 0)
      jq -c --argjson ns "$((cpu1 - cpu0))" --argjson has "$([[ -n ${MEM_PID[$t]:-} ]] && echo true || echo false)" \
        'if $has and .requests > 0 then . + {cpu_us_per_req: ($ns / 1e3 / .requests)} else . end' \
        <<<"$run" >>"$TMP/runs-$scenario-$t"
      if [[ -n $sampler ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        forget "$sampler"
      fi
      log "$scenario $t, round $round: $(tail -1 "$TMP/runs-$scenario-$t" | jq -r '"\(.rps|floor) req/s"')"
    done
  done
  for t in "${TARGETS[@]}"; do
    j=$(median_run rps "$TMP/runs-$scenario-$t")
    if [[ $scenario == http1_keepalive && -n ${MEM_PID[$t]:-} ]]; then
      put ".memory_kib.${t}_load" "$(cat "$TMP"/rss-"$t"-* 2>/dev/null | sort -n | tail -1 | grep . || echo 0)"
    fi
    put ".$scenario.$t" "$j"
    put ".$scenario.$t.connections" "$WRK_CONNS"
    log "$scenario $t (median of $ROUNDS): $(jq -r '"\(.rps|floor) req/s, p50 \(.p50_us) us, p99 \(.p99_us) us, p99.9 \(.p999_us) us, errors \(.errors|add), runs \(.rps_runs)"' <<<"$j")"
  done
done
unset WRK_CONNS

# ---------------------------------------------------------------------------------------------------------
# 8. A fixed request rate (open loop): the latency each proxy adds at a rate it is asked to carry, as a mesh user
# sees it, and its CPU per request at a fixed rate. Run here, on the same processes as scenario 1.

# cpu_sum PIDS...: the CPU time (ns) of every process given so far, summed (nginx with two workers has two).
cpu_sum() {
  local pid total=0
  for pid in "$@"; do total=$((total + $(cpu_ns "$pid"))); done
  echo "$total"
}

# fixedrate_json ADDR RATE: one bench/tools fixedrate run (FR_CONNS keep-alive connections, FR_WARM s warm-up,
# FR_SECS s measured); prints its JSON.
fixedrate_json() {
  local out=$TMP/logs/fixedrate-$RANDOM.log
  "$TOOLS/fixedrate" --target "$1" --rate "$2" --conns "$FR_CONNS" --seconds "$FR_SECS" --warmup "$FR_WARM" \
    --timeout-ms 2000 2>"$out" || die "fixedrate $1 at $2 req/s failed: $(tail -3 "$out")"
}

# fixed_rate KEY ADDRS PIDS RATES...: for each rate, ROUNDS rounds, each over the targets of the associative array
# named ADDRS (target -> ip:port) in the order of FR_TARGETS; the CPU of the processes PIDS names (target -> pids;
# none for direct) over each run. .KEY.r<RATE>.<target> in results.json: the median over the rounds of each
# latency percentile, of the achieved rate and of the CPU per request (each field on its own), the errors summed,
# and every run in `runs`.
fixed_rate() {
  local key=$1 rate round t run c0 c1 j f
  local -n fr_addr=$2 fr_pids=$3
  shift 3
  for rate in "$@"; do
    for t in "${FR_TARGETS[@]}"; do rm -f "$TMP/fr-$key-$rate-$t"; done
    for ((round = 1; round <= ROUNDS; round++)); do
      for t in "${FR_TARGETS[@]}"; do
        # shellcheck disable=SC2086  # a list of pids
        c0=$(cpu_sum ${fr_pids[$t]:-})
        run=$(fixedrate_json "${fr_addr[$t]}" "$rate")
        # shellcheck disable=SC2086
        c1=$(cpu_sum ${fr_pids[$t]:-})
        jq -c --argjson ns "$((c1 - c0))" --argjson has "$([[ -n ${fr_pids[$t]:-} ]] && echo true || echo false)" \
          'if $has and .responses_total > 0 then . + {cpu_us_per_req: ($ns / 1e3 / .responses_total)} else . end' \
          <<<"$run" >>"$TMP/fr-$key-$rate-$t"
        log "$key $rate req/s $t, round $round: $(tail -1 "$TMP/fr-$key-$rate-$t" | jq -r '"achieved \(.achieved_rps|floor) req/s, p50 \(.p50_us) us, p99 \(.p99_us) us, p99.9 \(.p999_us) us, errors \(.errors|add), unfinished \(.unfinished)\(if .cpu_us_per_req then ", CPU \(.cpu_us_per_req*100|round/100) us/req" else "" end)"')"
      done
    done
    for t in "${FR_TARGETS[@]}"; do
      f=$TMP/fr-$key-$rate-$t
      j=$(jq -s -c '. as $runs
        | def median(f): [$runs[] | f | select(. != null)] | sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
        {asked_rps: $runs[0].asked_rps, conns: $runs[0].conns, seconds: $runs[0].seconds,
         achieved_rps: median(.achieved_rps), p50_us: median(.p50_us), p90_us: median(.p90_us),
         p99_us: median(.p99_us), p999_us: median(.p999_us), max_us: median(.max_us), mean_us: median(.mean_us),
         send_lag_p99_us: median(.send_lag_p99_us), cpu_us_per_req: median(.cpu_us_per_req),
         errors: ([$runs[].errors | add] | add), unfinished: ([$runs[].unfinished] | add),
         requests: ([$runs[].requests] | add), runs: $runs}' "$f") || die "fixed rate $key $rate $t: no runs"
      put ".$key.r$rate.$t" "$j"
      log "$key $rate req/s $t (median of $ROUNDS): $(jq -r '"achieved \(.achieved_rps|floor) req/s, p50 \(.p50_us) us, p99 \(.p99_us) us, p99.9 \(.p999_us) us, errors \(.errors), unfinished \(.unfinished)"' <<<"$j")"
    done
  done
}

FR_TARGETS=(direct baton nginx haproxy)
declare -A FR_ADDR=([direct]="127.0.0.1:$UP" [baton]="127.0.0.1:$BATON_HTTP" [nginx]="127.0.0.1:$NGX"
  [haproxy]="127.0.0.1:$HAP")
declare -A FR_PIDS=([baton]=$BATON_PID [nginx]=$NGINX_WORKER [haproxy]=$HAPROXY_WORKER)
fixed_rate fixed_rate FR_ADDR FR_PIDS "${FR_RATES[@]}"
put .fixed_rate.rates "$(printf '%s\n' "${FR_RATES[@]}" | jq -s -c .)"
put .fixed_rate.cpu_rate "$FR_CPU_RATE"
put_str .fixed_rate.note "Fixed rate: bench/tools fixedrate, one thread, $FR_CONNS keep-alive connections, request k due at k/rate on connection k mod $FR_CONNS, one request at a time per connection; latency from the due time to the end of the response (a request that waits for its connection counts its wait: no coordinated omission); ${FR_WARM} s warm-up, ${FR_SECS} s measured, $ROUNDS interleaved rounds per rate, each figure the median of the rounds. Added latency = through the proxy minus direct (the same client against the upstream). A rate counts as sustained when the achieved rate is at least 95% of it. CPU per request: the proxy process's user + kernel time (/proc/PID/schedstat) over the run divided by the responses of the run."

# ---------------------------------------------------------------------------------------------------------
# 3. h2c (prior knowledge): nginx 1.22 serves h2c on a plain `listen ... http2` port, so direct works.

# conns_to PID PORT: the established TCP connections process PID holds to 127.0.0.1:PORT (its sockets' inodes
# looked up in /proc/net/tcp).
conns_to() {
  local inodes
  inodes=$(find "/proc/$1/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' | tr '\n' ' ')
  awk -v port="$(printf ':%04X' "$2")" -v inodes=" $inodes " '
    $4 == "01" && substr($3, length($3) - 4) == port && index(inodes, " " $10 " ") { n++ }
    END { print n + 0 }' /proc/net/tcp
}

# mid_run_conns PID PORT: in the middle of a measured run that starts now, conns_to PID PORT; null without a PID
# (direct runs).
mid_run_conns() {
  if [[ -z ${1:-} ]]; then
    echo null
    return 0
  fi
  sleep "$(awk -v w="$WARMUP" -v d="$DUR" 'BEGIN { print w + d / 2 }')"
  conns_to "$1" "$2"
}

# h2_json URL [PID UPSTREAM_PORT]: one h2load run; req/s, counts and the mean/sd/max request time h2load prints,
# p50/p99 from its per-request log (--log-file: one write(2) per request in h2load, alike for every target), and
# with a PID the connections that process holds to UPSTREAM_PORT mid-run.
h2_json() {
  local out=$TMP/logs/h2load-$RANDOM.log reqlog=$TMP/h2load-requests.tsv warm=() pid conns n j p50 p99
  rm -f "$reqlog"
  ((WARMUP > 0)) && warm=(--warm-up-time="$WARMUP")
  h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DUR" "${warm[@]}" --log-file="$reqlog" "$1" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  conns=$(mid_run_conns "${2:-}" "${3:-}")
  wait "$pid" || die "h2load $1 failed: $(tail -5 "$out")"
  forget "$pid"
  n=$(wc -l <"$reqlog" 2>/dev/null || echo 0)
  # The log's third column: microseconds from the start of a request to the end of its response.
  read -r p50 p99 < <(cut -f3 "$reqlog" 2>/dev/null | sort -n | awk -v n="$n" '
    function rank(p, r) { r = p * n; if (r > int(r)) r = int(r) + 1; return r < 1 ? 1 : r }
    BEGIN { r50 = rank(0.5); r99 = rank(0.99) }
    NR == r50 { a = $1 } NR == r99 { b = $1 }
    END { printf "%.4f %.4f\n", a / 1000, b / 1000 }')
  j=$(awk -v p50="$p50" -v p99="$p99" -v conns="$conns" -v logged="$n" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^finished in/ { rps = $4 }
    /^requests:/ { total = $2; ok = $8; failed = $10; errored = $12; timeout = $14 }
    /^time for request:/ { mean = ms($6); max = ms($5); sd = ms($7) }
    END {
      if (rps == "" || total == "") exit 1
      printf "{\"rps\":%s,\"requests\":%s,\"succeeded\":%s,\"failed\":%d,\"mean_ms\":%.4f,\"sd_ms\":%.4f,\"max_ms\":%.4f,\"p50_ms\":%s,\"p99_ms\":%s,\"logged\":%d,\"upstream_conns\":%s}\n", rps, total, ok, failed + errored + timeout, mean, sd, max, p50, p99, logged, conns
    }' "$out") || die "cannot parse h2load output: $(tail -12 "$out")"
  # A reachable target (the sanity checks passed) that completes nothing: the harness is broken.
  [[ $(jq .succeeded <<<"$j") -gt 0 ]] || die "h2load $1: no request succeeded: $(grep -E '^(requests|status codes):' "$out")"
  echo "$j"
}
for t in "${TARGETS[@]}"; do
  j=$(h2_json "${H2_URL[$t]}" "${MEM_PID[$t]:-}" "$UP")
  put ".h2c.$t" "$j"
  log "h2c $t: $(jq -r '"\(.rps|floor) req/s, mean \(.mean_ms) ms, p99 \(.p99_ms) ms, failed \(.failed)"' <<<"$j")"
done
put_str .h2c.note "h2c direct: nginx $(jq -r .machine.tools.nginx "$RESULTS") upstream on a plain \`listen ... http2\` port (prior knowledge); nginx and HAProxy fronts with h2c listeners proxy to the same HTTP/1.1 upstream as baton"

# ---------------------------------------------------------------------------------------------------------
# 3b. h2c to an h2c upstream: the same h2load run against fronts that speak HTTP/2 (prior knowledge) upstream,
# to the nginx upstream's h2c port (direct: that port).

declare -A H2UP_URL=([direct]="http://127.0.0.1:$UP_H2/" [baton]="http://127.0.0.1:$BATON_H2UP/"
  [nginx]="http://127.0.0.1:$NGX_H2UP/" [haproxy]="http://127.0.0.1:$HAP_H2UP/")
for t in "${TARGETS[@]}"; do
  j=$(h2_json "${H2UP_URL[$t]}" "${MEM_PID[$t]:-}" "$UP_H2")
  put ".h2c_upstream.$t" "$j"
  log "h2c to h2c upstream $t: $(jq -r '"\(.rps|floor) req/s, mean \(.mean_ms) ms, p99 \(.p99_ms) ms, failed \(.failed), upstream connections \(.upstream_conns)"' <<<"$j")"
done
put_str .h2c_upstream.note "h2c to an h2c upstream: h2load (prior knowledge) to each front, which speaks HTTP/2 with prior knowledge to the nginx upstream's h2c port (direct: h2load to that port). baton: a \`protocol: h2c\` cluster (at most 4 multiplexed connections per endpoint). nginx $(jq -r .machine.tools.nginx "$RESULTS"): \`grpc_pass grpc://...\`, its only way to speak HTTP/2 upstream; it proxies plain GETs too (the sanity check sees the upstream answer \"HTTP/2.0 GET\"), but with one upstream connection per request in flight, no multiplexing (\`keepalive 256\` keeps them for reuse). HAProxy: \`server ... proto h2\`, multiplexed, \`http-reuse always\`. p50/p99 from h2load's per-request log (--log-file), which h2load writes with one write(2) per request, alike for every target. Upstream connections: those the proxy's process holds to the upstream port in the middle of the run."

# ---------------------------------------------------------------------------------------------------------
# 3c. gRPC unary calls: bench/tools grpcload (16 connections x 16 streams, one thread, every answer checked down
# to grpc-status 0 in the trailers) against bench/tools grpcserver, direct and through each HTTP/2 upstream setup.

# grpc_json ADDR [PID UPSTREAM_PORT]: one grpcload run; its JSON, with the upstream connections PID holds mid-run.
grpc_json() {
  local out=$TMP/logs/grpcload-$RANDOM.log json=$TMP/grpcload.json pid conns
  "$TOOLS/grpcload" --target "$1" --conns "$H2_CONNS" --streams "$H2_STREAMS" --seconds "$DUR" --warmup "$WARMUP" \
    --timeout-ms 5000 >"$json" 2>"$out" &
  pid=$!
  PIDS+=("$pid")
  conns=$(mid_run_conns "${2:-}" "${3:-}")
  # grpcload exits 1 only when not one call succeeded (a reachable target that completes nothing: broken harness).
  wait "$pid" || die "grpcload $1: $(tail -3 "$out")"
  forget "$pid"
  jq -ce --argjson c "$conns" '. + {upstream_conns: $c}' "$json" 2>/dev/null ||
    die "grpcload $1 printed no JSON: $(head -c 300 "$json") $(tail -3 "$out")"
}
declare -A GRPC_ADDR=([direct]="127.0.0.1:$GRPC_UP" [baton]="127.0.0.1:$BATON_GRPC" [nginx]="127.0.0.1:$NGX_GRPC"
  [haproxy]="127.0.0.1:$HAP_GRPC")
for t in "${TARGETS[@]}"; do
  j=$(grpc_json "${GRPC_ADDR[$t]}" "${MEM_PID[$t]:-}" "$GRPC_UP")
  put ".grpc_unary.$t" "$j"
  log "grpc unary $t: $(jq -r '"\(.calls_per_s|floor) calls/s, mean \(.mean_ms) ms, p99 \(.p99_ms) ms, failed \(.failed) of \(.calls)\(if .first_failure then " (first: " + .first_failure + ")" else "" end), upstream connections \(.upstream_conns)"' <<<"$j")"
done
put_str .grpc_unary.note "gRPC unary: bench/tools grpcload (one thread, $H2_CONNS connections x $H2_STREAMS calls in flight, h2c) calls helloworld.Greeter/SayHello on bench/tools grpcserver (one thread, h2c), directly and through each proxy's HTTP/2 upstream (baton \`protocol: h2c\`, nginx \`grpc_pass\`, HAProxy \`proto h2\`). A call counts as done when its answer is status 200, application/grpc, exactly the expected reply, and trailers with grpc-status 0; anything else is a failed call (by kind in results.json). grpcserver refuses requests without \`te: trailers\`. Calls/s counts the successful calls; latency is theirs, from writing the request to the trailers. h2load cannot check trailers (it counts an HTTP 200 carrying grpc-status 14 as a success), hence the own client."

# ---------------------------------------------------------------------------------------------------------
# 4. TCP relay: one bulk stream into a sink that confirms every byte.

# As scenarios 1-2: ROUNDS interleaved rounds, the median run reported, every run's rate in `gbit_s_runs`.
for t in "${TARGETS[@]}"; do rm -f "$TMP/tcp-runs-$t"; done
for ((round = 1; round <= ROUNDS; round++)); do
  for t in "${TARGETS[@]}"; do
    "$TOOLS/tcpbulk" send --target "${TCP_ADDR[$t]}" --seconds "$TCP_SECS" --warmup "$TCP_WARM" \
      2>"$TMP/logs/tcpbulk.err" >>"$TMP/tcp-runs-$t" || die "tcpbulk through $t failed: $(cat "$TMP/logs/tcpbulk.err")"
    echo >>"$TMP/tcp-runs-$t"
    log "tcp bulk $t, round $round: $(tail -2 "$TMP/tcp-runs-$t" | jq -r 'select(.) | "\(.gbit_s) Gbit/s (verified \(.verified))"')"
  done
done
for t in "${TARGETS[@]}"; do
  j=$(median_run gbit_s "$TMP/tcp-runs-$t")
  put ".tcp_bulk.$t" "$j"
  log "tcp bulk $t (median of $ROUNDS): $(jq -r '"\(.gbit_s) Gbit/s, runs \(.gbit_s_runs)"' <<<"$j")"
done

# ---------------------------------------------------------------------------------------------------------
# 4b. TCP relay at a fixed rate: the same stream paced at TCP_RATE_GBIT; the proxy's CPU per GB relayed.

for t in baton nginx haproxy; do rm -f "$TMP/tcprate-runs-$t"; done
for ((round = 1; round <= ROUNDS; round++)); do
  for t in baton nginx haproxy; do
    c0=$(cpu_ns "${MEM_PID[$t]}")
    run=$("$TOOLS/tcpbulk" send --target "${TCP_ADDR[$t]}" --seconds "$TCP_RATE_SECS" --warmup "$TCP_WARM" \
      --rate-gbit "$TCP_RATE_GBIT" 2>"$TMP/logs/tcpbulk.err") || die "tcpbulk at $TCP_RATE_GBIT Gbit/s through $t failed: $(cat "$TMP/logs/tcpbulk.err")"
    c1=$(cpu_ns "${MEM_PID[$t]}")
    jq -c --argjson ns "$((c1 - c0))" '. + {cpu_ms_per_gb: ($ns / 1e6 / (.bytes_total / 1e9))}' <<<"$run" \
      >>"$TMP/tcprate-runs-$t"
    log "tcp at $TCP_RATE_GBIT Gbit/s $t, round $round: $(tail -1 "$TMP/tcprate-runs-$t" | jq -r '"\(.gbit_s) Gbit/s (verified \(.verified)), CPU \(.cpu_ms_per_gb*10|round/10) ms per GB"')"
  done
done
for t in baton nginx haproxy; do
  j=$(median_run cpu_ms_per_gb "$TMP/tcprate-runs-$t")
  put ".tcp_rate.$t" "$j"
  log "tcp at $TCP_RATE_GBIT Gbit/s $t (median of $ROUNDS): $(jq -r '"\(.cpu_ms_per_gb*10|round/10) ms CPU per GB at \(.gbit_s) Gbit/s, runs \(.cpu_ms_per_gb_runs)"' <<<"$j")"
done
put .tcp_rate.rate_gbit "$TCP_RATE_GBIT"
put_str .tcp_rate.note "TCP relay at a fixed rate: tcpbulk send --rate-gbit $TCP_RATE_GBIT (64 KiB writes, each when the bytes before it are due) through each proxy into the sink, ${TCP_WARM} s + ${TCP_RATE_SECS} s per run, $ROUNDS interleaved rounds, the median run by CPU per GB; CPU: the proxy process's user + kernel time (/proc/PID/schedstat) over the run per GB (1e9 bytes) sent."

stop_pid "$BATON_PID" # the static instance is done; the upgrade scenarios run their own

# ---------------------------------------------------------------------------------------------------------
# 5. Upgrades / reloads under load.

UPG_INTERVAL_MS=$((UPG_SPAN * 1000 / UPG_COUNT))
LOAD_S=$((1 + UPG_SPAN + 2)) # 1 s before the first upgrade, 2 s after the last (the baton drain timeout)

# baton_upgrader NAME COUNT INTERVAL_MS: starts the upgrader on two new free ports (instance 1 serving when it
# returns); sets UPG_PID, UPG_DIR, UPG_HTTP. UPG_HANDOFF_EXTRA: more `handoff:` fields (YAML lines); UPG_ARGS:
# more upgrader arguments; UPG_WRAP: a command to run the upgrader through (with_nofile).
baton_upgrader() {
  local name=$1 count=$2 interval=$3 http admin
  read -r http admin <<<"$("$TOOLS/freeports" 2)"
  [[ -n $admin ]] || die "freeports did not print 2 ports"
  UPG_HTTP=$http
  UPG_DIR=$TMP/$name
  mkdir -p "$UPG_DIR/uds"
  cat >"$UPG_DIR/baton.yaml" <<EOF
listeners:
  - name: http
    address: 127.0.0.1:$http
    protocol: http
    cluster: app
clusters:
  - name: app
    endpoints: ["127.0.0.1:$UP"]
admin:
  address: 127.0.0.1:$admin
handoff:
  uds_dir: $UPG_DIR/uds
  drain_timeout: $DRAIN
${UPG_HANDOFF_EXTRA:-}
EOF
  local extra=()
  for a in "${BATON_ARGS[@]}"; do extra+=(--baton-arg "$a"); done
  extra+=(${UPG_ARGS[@]+"${UPG_ARGS[@]}"})
  # shellcheck disable=SC2086  # UPG_WRAP: a command name or nothing
  start_bg "$name" ${UPG_WRAP:-} "$TOOLS/upgrader" --baton "$BATON" --config "$UPG_DIR/baton.yaml" --uds-dir "$UPG_DIR/uds" \
    --admin "127.0.0.1:$admin" --log-dir "$UPG_DIR/logs" --out "$UPG_DIR/report.json" --count "$count" \
    --interval-ms "$interval" --trigger "$UPG_DIR/go" --stop-file "$UPG_DIR/stop" "${extra[@]}"
  UPG_PID=$BG_PID
  local i
  for ((i = 0; i < 200; i++)); do
    grep -q '^ready' "$TMP/logs/$name.log" 2>/dev/null && return 0
    kill -0 "$UPG_PID" 2>/dev/null || die "upgrader $name exited: $(tail -5 "$TMP/logs/$name.log")"
    sleep 0.05
  done
  die "upgrader $name: baton instance 1 not serving after 10 s"
}

# upgrader_done: waits (up to 30 s) for the upgrader to have written its report; the last instance still serves.
upgrader_done() {
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q '^done' "$TMP/logs/$(basename "$UPG_DIR").log" 2>/dev/null && break
    kill -0 "$UPG_PID" 2>/dev/null || break
    sleep 0.05
  done
}

# finish_upgrader: waits for the report, stops the last instance; prints the report.
finish_upgrader() {
  upgrader_done
  touch "$UPG_DIR/stop"
  wait "$UPG_PID" 2>/dev/null || true
  forget "$UPG_PID"
  [[ -s $UPG_DIR/report.json ]] || die "upgrader wrote no report: $(tail -5 "$TMP/logs/$(basename "$UPG_DIR").log")"
  cat "$UPG_DIR/report.json"
}

# start_load MODE ADDR: the client of MODE against ADDR (ip:port) in the background, for the mode's load time;
# its JSON goes to $TMP/load-upg.json. Sets LOAD_PID.
start_load() {
  local mode=$1 addr=$2
  case $mode in
    keepalive) wrk_json "${LOAD_S}s" "http://$addr/" >"$TMP/load-upg.json" & ;;
    close) wrk_json "${LOAD_S}s" "http://$addr/" -H "Connection: close" >"$TMP/load-upg.json" & ;;
    idle) idle_json "$addr" >"$TMP/load-upg.json" & ;;
  esac
  LOAD_PID=$!
  PIDS+=("$LOAD_PID")
}

# idle_json ADDR: the idle keep-alive pool (bench/tools idlepool) for IDLE_LOAD_S; prints its JSON.
idle_json() {
  local out=$TMP/logs/idlepool-$RANDOM.log
  "$TOOLS/idlepool" --target "$1" --conns "$IDLE_CONNS" --round-ms "$IDLE_ROUND_MS" --seconds "$IDLE_LOAD_S" \
    2>"$out" || die "idlepool $1 failed: $(tail -5 "$out")"
}

# warm MODE ADDR: the wrk warm-up before a wrk mode (the idle pool warms up in the seconds before the first upgrade).
warm() {
  local extra=()
  ((WARMUP > 0)) && [[ $1 != idle ]] || return 0
  [[ $1 == close ]] && extra=(-H "Connection: close")
  wrk_json "${WARMUP}s" "http://$2/" "${extra[@]}" >/dev/null
}

# summarize SCENARIO TARGET: adds failed, requests and failed_per_100_upgrades (failed * 100 / the upgrades or
# reloads actually performed; null when there were none) next to the client's raw numbers, and logs them.
summarize() {
  local p=".$1.$2"
  put "$p" "$(jq -c "$p"' |
    (if .idlepool then {failed: .idlepool.failures, requests: .idlepool.requests}
     else {failed: (.wrk.errors | add), requests: .wrk.requests} end) as $s
    | . + $s + {failed_per_100_upgrades: (if .reloads > 0 then ($s.failed * 1000 / .reloads | round) / 10 else null end)}' \
    "$RESULTS")"
  log "$1 $2: $(jq -r --arg n "$UPG_COUNT" "$p"' | "failed \(.failed) of \(.requests), \(.failed_per_100_upgrades) per 100 upgrades (" + (
      if .idlepool then
        (.idlepool | [(.errors | to_entries[] | select(.value > 0) | "\(.key) \(.value)"),
          "reconnects \(.reconnects)", "server closes \(.server_closes)"] | join(", "))
      else
        (.wrk.errors | "connect \(.connect), read \(.read), write \(.write), timeout \(.timeout), non-2xx \(.status)")
      end) + "); upgrades/reloads done \(.reloads)/\($n)"' "$RESULTS")"
}

for mode in keepalive close idle; do
  scenario=upgrades_$mode
  client=wrk
  pre=1 settle=1 # seconds before the first upgrade; after the reloads, for the old workers to go
  if [[ $mode == idle ]]; then client=idlepool pre=$IDLE_PRE settle=$IDLE_SETTLE; fi

  # baton: hot upgrades, Kruise style (see bench/tools/src/bin/upgrader.rs and examples/demo.rs).
  baton_upgrader "upgrade-$mode" "$UPG_COUNT" "$UPG_INTERVAL_MS"
  warm "$mode" "127.0.0.1:$UPG_HTTP"
  start_load "$mode" "127.0.0.1:$UPG_HTTP"
  sleep "$pre"
  touch "$UPG_DIR/go"
  wait "$LOAD_PID" || die "$client during the baton upgrades failed"
  forget "$LOAD_PID"
  report=$(finish_upgrader)
  put ".$scenario.baton.$client" "$(cat "$TMP/load-upg.json")"
  put ".$scenario.baton.upgrader" "$report"
  put ".$scenario.baton.reloads" "$(jq '[.upgrades[] | select(.ok)] | length' <<<"$report")"
  summarize "$scenario" baton

  # nginx: kill -HUP (graceful reload: new workers, old ones finish and exit); HAProxy: kill -USR2 to the
  # master (seamless reload: the new worker gets the listening sockets).
  for t in nginx haproxy; do
    if [[ $t == nginx ]]; then pid=$NGINX_PID sig=HUP addr="127.0.0.1:$NGX"; else pid=$HAPROXY_PID sig=USR2 addr="127.0.0.1:$HAP"; fi
    warm "$mode" "$addr"
    start_load "$mode" "$addr"
    sleep "$pre"
    reloads=0
    t0=$(date +%s%N)
    for ((i = 0; i < UPG_COUNT; i++)); do
      # one reload every UPG_INTERVAL_MS, on a fixed schedule
      now=$(date +%s%N)
      due=$((t0 + i * UPG_INTERVAL_MS * 1000000))
      if ((due > now)); then
        sleep "$(printf '%d.%06d' $(((due - now) / 1000000000)) $((((due - now) % 1000000000) / 1000)))"
      fi
      if kill -"$sig" "$pid" 2>/dev/null; then reloads=$((reloads + 1)); fi
    done
    wait "$LOAD_PID" || die "$client during the $t reloads failed"
    forget "$LOAD_PID"
    kill -0 "$pid" 2>/dev/null || die "$t died during the reloads: $(tail -5 "$TMP/logs/$t.log")"
    check_ok "$t after reloads" "http://$addr/"
    put ".$scenario.$t.$client" "$(cat "$TMP/load-upg.json")"
    put ".$scenario.$t.reloads" "$reloads"
    summarize "$scenario" "$t"
    sleep "$settle" # let the old workers go
  done
done

# ---------------------------------------------------------------------------------------------------------
# 6. Handoff latency, no load.

baton_upgrader handoff "$HANDOFF_COUNT" "$HANDOFF_GAP_MS"
touch "$UPG_DIR/go"
report=$(finish_upgrader)
put .handoff "$report"
log "handoff: $(jq -r '[.upgrades[] | select(.ok)] | length' <<<"$report")/$HANDOFF_COUNT upgrades ok; start->serving ms: $(jq -c '[.upgrades[].serve_ms] | sort | {min: .[0], median: .[length/2|floor], max: .[-1]}' <<<"$report")"

# ---------------------------------------------------------------------------------------------------------
# 9. MANY_CONNS idle keep-alive connections: each proxy's RSS holding them (its own instance, configured for that
# many), and a baton upgrade that hands every one of them over.

# with_nofile CMD...: CMD with the soft open-file limit raised to NOFILE (for the processes of scenario 9).
with_nofile() {
  ulimit -Sn "$NOFILE" || exit 1
  exec "$@"
}
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=65536
((NOFILE >= MANY_CONNS + 1000)) ||
  die "scenario 9 holds $MANY_CONNS connections: it needs an open-file hard limit of at least $((MANY_CONNS + 1000)) (ulimit -Hn is $NOFILE)"

# field NAME LINE: the value of NAME=value in a log line of baton's (text format).
field() { sed -n "s/.* $1=\"\{0,1\}\([0-9.a-z]*\).*/\1/p" <<<"$2"; }

# hold_start ADDR NAME: starts holdconns (MANY_CONNS connections to ADDR, one request each) and waits until it
# holds them; sets HOLD_PID, HOLD_OUT, HOLD_GO.
hold_start() {
  local i
  HOLD_OUT=$TMP/logs/$2.log HOLD_GO=$TMP/$2.go
  start_bg "$2" with_nofile "$TOOLS/holdconns" --target "$1" --conns "$MANY_CONNS" --go "$HOLD_GO" --timeout-ms 5000
  HOLD_PID=$BG_PID
  for ((i = 0; i < 1200; i++)); do
    grep -q '^open ' "$HOLD_OUT" 2>/dev/null && break
    kill -0 "$HOLD_PID" 2>/dev/null || die "holdconns $2 exited: $(tail -3 "$HOLD_OUT")"
    sleep 0.05
  done
  grep -q '^open ' "$HOLD_OUT" || die "holdconns $2: not holding its connections after 60 s"
  [[ $(awk '/^open /{print $2}' "$HOLD_OUT") == "$MANY_CONNS" ]] ||
    die "holdconns $2 holds only $(awk '/^open /{print $2}' "$HOLD_OUT") of $MANY_CONNS connections: $(grep -v '^open' "$HOLD_OUT" | tail -2)"
}

# hold_finish: the next request on every connection held; sets HOLD_JSON to holdconns' JSON.
hold_finish() {
  touch "$HOLD_GO"
  wait "$HOLD_PID" || die "holdconns failed: $(tail -3 "$HOLD_OUT")"
  forget "$HOLD_PID"
  HOLD_JSON=$(grep '^{' "$HOLD_OUT" | tail -1 | jq -c .) && [[ -n $HOLD_JSON ]] ||
    die "holdconns printed no JSON: $(tail -3 "$HOLD_OUT")"
}

read -r MANY_NGX MANY_HAP <<<"$("$TOOLS/freeports" 2)"
mkdir -p "$TMP/many-nginx/tmp" "$TMP/many-haproxy"
{
  cat <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile $((MANY_CONNS + 4000 < NOFILE ? MANY_CONNS + 4000 : NOFILE));
pid $TMP/many-nginx/nginx.pid;
error_log $TMP/many-nginx/error.log warn;
events { worker_connections $((MANY_CONNS + 1024)); }
http {
EOF
  nginx_http_common "$TMP/many-nginx"
  nginx_proxy_app "127.0.0.1:$MANY_NGX"
  echo "}"
} >"$TMP/many-nginx/nginx.conf"
# HAProxy sizes its fd table for two sockets per connection (maxconn 10,400: 20,837) and by default refuses to
# start below that; `no strict-limits` lets it run within the hard limit, which holds MANY_CONNS idle client
# connections and the few upstream ones.
cat >"$TMP/many-haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $((MANY_CONNS + 400))
  no strict-limits
defaults
  timeout connect 1s
  timeout client 60s
  timeout server 30s
  timeout http-keep-alive 60s
frontend fe
  mode http
  option http-keep-alive
  option forwardfor
  bind 127.0.0.1:$MANY_HAP
  default_backend be
backend be
  mode http
  option http-keep-alive
  http-reuse always
  server up 127.0.0.1:$UP
EOF

for t in baton nginx haproxy; do
  case $t in
    baton)
      # Kruise-style upgrade (upgrader --count 1); the old instance is reset only once it says it is superseded
      # (every connection handed over), and its probation is short, so it gets there soon after.
      UPG_HANDOFF_EXTRA="  probation: 100ms" UPG_ARGS=(--wait-superseded) UPG_WRAP=with_nofile
      baton_upgrader many-baton 1 100
      unset UPG_HANDOFF_EXTRA UPG_ARGS UPG_WRAP
      pid=$(awk '/^ready/ {print $2}' "$TMP/logs/many-baton.log")
      addr=127.0.0.1:$UPG_HTTP
      ;;
    nginx)
      start_bg many-nginx with_nofile nginx -c "$TMP/many-nginx/nginx.conf" -p "$TMP/many-nginx" -e "$TMP/many-nginx/error.log"
      proc=$BG_PID addr=127.0.0.1:$MANY_NGX
      wait_port "$MANY_NGX" "nginx ($MANY_CONNS connections)" "$TMP/logs/many-nginx.log"
      pid=$(child_of "$proc") || die "no nginx worker process (scenario 9)"
      ;;
    haproxy)
      start_bg many-haproxy with_nofile haproxy -db -f "$TMP/many-haproxy/haproxy.cfg"
      proc=$BG_PID pid=$BG_PID addr=127.0.0.1:$MANY_HAP
      wait_port "$MANY_HAP" "haproxy ($MANY_CONNS connections)" "$TMP/logs/many-haproxy.log"
      ;;
  esac
  sleep 0.3
  put ".many_conns.$t.rss_before_kib" "$(rss_kib "$pid")"
  hold_start "$addr" "holdconns-$t"
  sleep 0.5
  put ".many_conns.$t.rss_holding_kib" "$(rss_kib "$pid")"
  put ".many_conns.$t.open_ms" "$(awk '/^open /{print $3}' "$HOLD_OUT")"
  if [[ $t == baton ]]; then
    touch "$UPG_DIR/go"
    upgrader_done
    report=$(cat "$UPG_DIR/report.json" 2>/dev/null) || die "the upgrader of scenario 9 wrote no report"
    new_pid=$(jq -r .final_pid <<<"$report")
    put ".many_conns.baton.rss_after_handoff_kib" "$(rss_kib "$new_pid")"
  fi
  hold_finish
  put ".many_conns.$t.holdconns" "$HOLD_JSON"
  if [[ $t == baton ]]; then
    report=$(finish_upgrader)
    put .many_conns.baton.upgrader "$report"
    # What the two instances logged: the old one's hub (offered, taken, the last acknowledgement after the
    # commit), the new one's receiving side (adopted, refused).
    sent=$(grep -h 'connection migration over' "$UPG_DIR/logs/baton-1.log" | tail -1)
    got=$(grep -h 'connection migration from the predecessor over' "$UPG_DIR/logs/baton-2.log" | tail -1)
    [[ -n $sent && -n $got ]] || die "scenario 9: the baton logs have no migration summary (see $UPG_DIR/logs)"
    put .many_conns.baton.migration "$(jq -n -c --arg offered "$(field offered "$sent")" --arg taken "$(field taken "$sent")" \
      --arg up "$(field upstream_taken "$sent")" --arg last "$(field last_ack_ms "$sent")" \
      --arg elapsed "$(field elapsed_ms "$sent")" --arg adopted "$(field adopted "$got")" \
      --arg refused "$(field refused "$got")" \
      '{offered: ($offered | tonumber? // null), taken: ($taken | tonumber? // null),
        upstream_taken: ($up | tonumber? // null), last_ack_ms: ($last | tonumber? // null),
        elapsed_ms: ($elapsed | tonumber? // null), adopted: ($adopted | tonumber? // null),
        refused: ($refused | tonumber? // null)}')"
  else
    stop_pid "$proc"
  fi
  log "$MANY_CONNS connections, $t: $(jq -r --arg t "$t" '.many_conns[$t] | "RSS \(.rss_before_kib) KiB before, \(.rss_holding_kib) KiB holding them (opened in \(.open_ms) ms); next request on each: \(.holdconns.second_ok) ok, \(.holdconns.second_failed) failed\(if .migration then "; upgrade: offered \(.migration.offered), taken \(.migration.taken), adopted \(.migration.adopted), last acknowledged \(.migration.last_ack_ms) ms after the commit; the new instance holds them in \(.rss_after_handoff_kib) KiB" else "" end)"' "$RESULTS")"
done
put .many_conns.conns "$MANY_CONNS"
put_str .many_conns.note "$MANY_CONNS idle keep-alive connections: bench/tools holdconns opens them 256 at a time, one GET / on each, then holds them idle; RSS (VmRSS) of the proxy's process before and while holding them. Each proxy its own instance sized for them: nginx worker_connections $((MANY_CONNS + 1024)), HAProxy maxconn $((MANY_CONNS + 400)) with \`no strict-limits\`, baton as is (the soft open-file limit raised to the hard one, $NOFILE, for all three). baton is then upgraded once, Kruise style (upgrader, handoff.probation 100ms); the old instance logs when the successor acknowledged the last connection it took, counted from the commit. Then the next request on every connection: a connection lost in the handoff would fail it."

# ---------------------------------------------------------------------------------------------------------
# 10. Two workers: the keep-alive throughput (wrk -c$WIDE_CONNS) and the fixed-rate latency of FR2_RATES with baton
# --workers 2, nginx worker_processes 2, HAProxy nbthread 2 (their own instances; the upstream as before).

read -r TWO_BATON TWO_ADMIN TWO_NGX TWO_HAP <<<"$("$TOOLS/freeports" 4)"
mkdir -p "$TMP/two-nginx/tmp" "$TMP/two-haproxy" "$TMP/uds-two"
{
  echo "daemon off;"
  echo "worker_processes 2;"
  echo "worker_rlimit_nofile 16384;"
  echo "pid $TMP/two-nginx/nginx.pid;"
  echo "error_log $TMP/two-nginx/error.log warn;"
  echo "events { worker_connections 8192; }"
  echo "http {"
  nginx_http_common "$TMP/two-nginx"
  nginx_proxy_app "127.0.0.1:$TWO_NGX"
  echo "}"
} >"$TMP/two-nginx/nginx.conf"
sed -e 's/^  nbthread 1$/  nbthread 2/' -e '/^frontend fe_h2up$/,$d' -e "s/^  bind 127.0.0.1:$HAP\$/  bind 127.0.0.1:$TWO_HAP/" \
  -e "/^  bind 127.0.0.1:$HAP_H2 proto h2\$/d" -e '/^  stats socket /d' "$TMP/haproxy/haproxy.cfg" >"$TMP/two-haproxy/haproxy.cfg"
grep -q "^  nbthread 2$" "$TMP/two-haproxy/haproxy.cfg" && grep -q "bind 127.0.0.1:$TWO_HAP" "$TMP/two-haproxy/haproxy.cfg" ||
  die "the two-thread HAProxy config was not derived: $(cat "$TMP/two-haproxy/haproxy.cfg")"
cat >"$TMP/two-baton.yaml" <<EOF
listeners:
  - name: http
    address: 127.0.0.1:$TWO_BATON
    protocol: http
    cluster: app
clusters:
  - name: app
    endpoints: ["127.0.0.1:$UP"]
admin:
  address: 127.0.0.1:$TWO_ADMIN
handoff:
  uds_dir: $TMP/uds-two
EOF
start_bg two-nginx nginx -c "$TMP/two-nginx/nginx.conf" -p "$TMP/two-nginx" -e "$TMP/two-nginx/error.log"
TWO_NGINX_PID=$BG_PID
start_bg two-haproxy haproxy -db -f "$TMP/two-haproxy/haproxy.cfg"
TWO_HAPROXY_PID=$BG_PID
TWO_BATON_ARGS=()
[[ ${#BATON_ARGS[@]} -gt 0 ]] && TWO_BATON_ARGS=(--workers 2)
start_bg two-baton "${BATON_ENV[@]}" "$BATON" run --config "$TMP/two-baton.yaml" "${TWO_BATON_ARGS[@]}"
TWO_BATON_PID=$BG_PID
for p in "$TWO_BATON:baton --workers 2" "$TWO_NGX:nginx worker_processes 2" "$TWO_HAP:haproxy nbthread 2"; do
  wait_port "${p%%:*}" "${p#*:}" "$TMP/logs"
done
check_ok "baton --workers 2" "http://127.0.0.1:$TWO_BATON/"
check_ok "nginx worker_processes 2" "http://127.0.0.1:$TWO_NGX/"
check_ok "haproxy nbthread 2" "http://127.0.0.1:$TWO_HAP/"
threads=$(awk '/^Threads:/ {print $2}' "/proc/$TWO_HAPROXY_PID/status")
[[ ${threads:-0} -ge 2 ]] || die "HAProxy (nbthread 2) runs ${threads:-no} threads"

declare -A TWO_URL=([baton]="http://127.0.0.1:$TWO_BATON/" [nginx]="http://127.0.0.1:$TWO_NGX/"
  [haproxy]="http://127.0.0.1:$TWO_HAP/")
export WRK_CONNS=$WIDE_CONNS
for t in baton nginx haproxy; do rm -f "$TMP/runs-two-$t"; done
for ((round = 1; round <= ROUNDS; round++)); do
  for t in baton nginx haproxy; do
    ((WARMUP > 0 && round == 1)) && wrk_json "${WARMUP}s" "${TWO_URL[$t]}" >/dev/null
    wrk_json "${DUR}s" "${TWO_URL[$t]}" >>"$TMP/runs-two-$t"
    echo >>"$TMP/runs-two-$t"
    log "two workers keep-alive $t, round $round: $(tail -2 "$TMP/runs-two-$t" | jq -r 'select(.) | "\(.rps|floor) req/s"')"
  done
done
unset WRK_CONNS
for t in baton nginx haproxy; do
  j=$(median_run rps "$TMP/runs-two-$t")
  put ".two_workers.keepalive.$t" "$j"
  log "two workers keep-alive $t (median of $ROUNDS): $(jq -r '"\(.rps|floor) req/s, p99 \(.p99_us) us, runs \(.rps_runs)"' <<<"$j")"
done
FR_TARGETS=(baton nginx haproxy)
declare -A TWO_ADDR=([baton]="127.0.0.1:$TWO_BATON" [nginx]="127.0.0.1:$TWO_NGX" [haproxy]="127.0.0.1:$TWO_HAP")
declare -A TWO_PIDS=()
fixed_rate two_workers TWO_ADDR TWO_PIDS "${FR2_RATES[@]}"
put .two_workers.rates "$(printf '%s\n' "${FR2_RATES[@]}" | jq -s -c .)"
put .two_workers.connections "$WIDE_CONNS"
put_str .two_workers.note "Two workers: baton --workers 2, nginx worker_processes 2, HAProxy nbthread 2, each its own instance in front of the same upstream (nginx, one worker). Keep-alive: wrk -t1 -c$WIDE_CONNS, $ROUNDS interleaved rounds, the median run; direct is scenario 1's figure with $WIDE_CONNS connections. Fixed rate: as scenario 8 at ${FR2_RATES[*]} req/s; added latency against scenario 8's direct runs."
for pid in "$TWO_BATON_PID" "$TWO_NGINX_PID" "$TWO_HAPROXY_PID"; do stop_pid "$pid"; done

# ---------------------------------------------------------------------------------------------------------
# Report

put_str .machine.loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
put .machine.duration_s "$((SECONDS - START_S))"
put .machine.build_s "$BUILD_S"
cp "$RESULTS" "$OUT_DIR/results.json"
echo
if ! "$CHART" --json "$OUT_DIR/results.json" --md "$OUT_DIR/results.md" --png "$OUT_DIR/results.png" --font "$FONT"; then
  die "the report could not be produced from $OUT_DIR/results.json"
fi
echo
log "wrote $OUT_DIR/results.md, results.json, results.png (mode $MODE, $((SECONDS - START_S)) s in all, builds ${BUILD_S} s)"
exit 0
