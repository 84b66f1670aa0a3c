#!/usr/bin/env bash
# Real-container pod test of the OpenKruise SidecarSet HotUpgrade sequence, driven with podman.
#
# One podman pod (its own network namespace, loopback only) plays a Kubernetes pod with a baton SidecarSet:
#   app      the example upstream on 127.0.0.1:8080                          (image baton-testkit:dev)
#   proxy-1  sidecar slot 1, baton:vN or baton-empty:vN                       (the two hot-upgrade slots share
#   proxy-2  sidecar slot 2                                                    the uds volume /var/run/baton)
#   client   the example loadgen against baton's listener 127.0.0.1:15006    (image baton-testkit:dev)
# and the script plays kubelet and the SidecarSet controller (env values from ../shared/kruise/README.md):
#   step 1  T0 create: proxy-1 baton:v1 (1/0), proxy-2 baton-empty:v1 (0/1), postStart `baton migrate` each
#   step 2  T1 upgrade v1->v2: the empty proxy-2 stopped (must exit 0) and recreated from baton:v2 (R2/1); it
#           takes over at start, its postStart (timed) waits for the handoff and must report it complete;
#           T2 reset: proxy-1 stopped (SIGTERM, 30 s grace; exit code 0 required, and it must be gone within
#           POD_TEST_DRAIN_LIMIT s, well inside the 10 s drain timeout, whether it exited on its own after
#           handing over or on the SIGTERM) and recreated from baton-empty:v2 (0/R2)
#   step 3  T3/T4 the other way: proxy-1 baton:v3 (R3/R2), proxy-2 reset to baton-empty:v3 (0/R3)
#   step 4  crash: proxy-1 SIGKILLed and recreated from baton:v3 with the env of a restart (R3/0): binds fresh,
#           traffic resumes
# After each step /status is read from the admin port inside the pod's network namespace. Any failed request
# in steps 1-3 fails the test. A summary table (image sizes, RSS of both slots, step times, request counts) is
# printed at the end; the exit code is non-zero on any failed assertion, with a line saying which.
#
# Usage (as root, from the repo root):   bash scripts/pod-test.sh
#   needs podman, runc, catatonit, curl and jq: `bash scripts/deps.sh test-pod` installs them (make test-pod does)
#   POD_TEST_SKIP_BUILD=1   reuse baton:v1..v3, baton-empty:v1..v3 and baton-testkit:dev when they exist
#   POD_TEST_DRAIN_LIMIT=N  seconds an old slot may take to exit (default 5; drain_timeout is 10)
#   POD_TEST_KEEP=1         keep the pod, its containers and the temp dir (for debugging); prints how to remove
set -euo pipefail
cd "$(dirname "$0")/.."

export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/images/containers.conf}

# ---------------------------------------------------------------------------------------------------------
# Constants
R2=7340032                  # SidecarSet resourceVersion written by the v1->v2 upgrade
R3=7340571                  # ... by the v2->v3 upgrade
GRACE=30                    # terminationGracePeriodSeconds: podman stop -t
DRAIN_TIMEOUT=10            # handoff.drain_timeout in the config below (seconds)
DRAIN_LIMIT=${POD_TEST_DRAIN_LIMIT:-5}   # an old slot must be gone within this (see stop_slot)
MIGRATE_TIMEOUT=40          # our own deadline for a postStart hook (baton's default is 60 s)
RESUME_LIMIT=10             # after the crash, traffic must resume within this many seconds of the restart
TESTKIT=baton-testkit:dev
VERSIONS=(v1 v2 v3)
KEEPALIVE_CLIENTS=8
NEWCONN_CLIENTS=4
SOAK=2                      # seconds of load after each step, before its counts are read

SUFFIX=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
POD=baton-pod-$SUFFIX
APP=app-$SUFFIX
P1=proxy-1-$SUFFIX
P2=proxy-2-$SUFFIX
CLIENT=client-$SUFFIX

WORK=""
INFRA_PID=""
T_START_MS=0

# ---------------------------------------------------------------------------------------------------------
# Helpers
log() { printf '[pod-test %6.1fs] %s\n' "$(elapsed_s)" "$*"; }
fail() {
  printf '\npod-test: FAIL: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
elapsed_s() {
  if [ "$T_START_MS" -eq 0 ]; then echo 0; else awk -v a="$(now_ms)" -v b="$T_START_MS" 'BEGIN{printf "%.1f", (a-b)/1000}'; fi
}
ms_fmt() { awk -v ms="$1" 'BEGIN{printf "%.3f s", ms/1000}'; }
# One field of a JSON object (a loadgen report, baton's /status) as text; empty when the field is absent or null,
# or when the text is not a JSON object.
jfield() { jq -r --arg k "$2" '.[$k] // empty' <<<"$1" 2>/dev/null || true; }

state() { podman inspect --format "{{.State.$2}}" "$1" 2>/dev/null || echo "?"; }

# Saves a container's log before it is removed, so a failure report can show it.
save_log() {
  local name=$1 tag=$2
  podman logs "$name" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$WORK/logs/$tag.log" || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ -n "$WORK" ] && [ -d "$WORK/logs" ]; then
    echo "---- diagnostics (last lines of each container's log) ----" >&2
    for c in "$APP" "$P1" "$P2" "$CLIENT"; do
      if podman container exists "$c" 2>/dev/null; then
        save_log "$c" "final-${c%-"$SUFFIX"}"
      fi
    done
    for f in "$WORK"/logs/*.log; do
      [ -e "$f" ] || continue
      echo "== $(basename "$f" .log)" >&2
      tail -n 25 "$f" | sed 's/^/   /' >&2
    done
  fi
  if [ "${POD_TEST_KEEP:-0}" = 1 ]; then
    echo "pod-test: kept pod $POD and $WORK; remove with: podman pod rm -f $POD; rm -rf $WORK" >&2
  else
    podman pod rm -f "$POD" >/dev/null 2>&1
    for c in "$CLIENT" "$P2" "$P1" "$APP"; do podman rm -f "$c" >/dev/null 2>&1; done
    [ -n "$WORK" ] && rm -rf "$WORK"
  fi
  exit "$rc"
}

# GET a path on an address inside the pod's network namespace; prints the body, fails on a non-2xx answer.
pod_curl() {
  nsenter -t "$INFRA_PID" -n curl -sf -m 2 "http://$1$2"
}

# /status is pretty-printed JSON: compacted onto one line (as it came, on one line, if it is not JSON: the
# checks of its fields then fail and print it).
status() {
  local body
  body=$(pod_curl 127.0.0.1:15000 /status) || return 1
  jq -c . <<<"$body" 2>/dev/null || tr -d '\n' <<<"$body"
}

# Waits until /status answers with phase serving (after a container start). Prints the status JSON.
wait_serving() {
  local deadline=$(($(now_ms) + 15000)) s=""
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if s=$(status 2>/dev/null) && [ "$(jfield "$s" phase)" = serving ]; then
      echo "$s"
      return 0
    fi
    sleep 0.1
  done
  fail "baton's admin /status did not answer with phase serving within 15 s (last answer: ${s:-none})"
}

# Asserts the fields of /status after a step.
check_status() {
  local step=$1 want_version=$2 want_generation=$3 want_role=$4 s
  s=$(status) || fail "$step: GET /status on 127.0.0.1:15000 inside the pod failed"
  local v g r p
  v=$(jfield "$s" version)
  g=$(jfield "$s" generation)
  r=$(jfield "$s" role)
  p=$(jfield "$s" phase)
  log "$step: /status version=$v generation=$g role=$r phase=$p"
  [ "$v" = "$want_version" ] || fail "$step: /status version is '$v', expected '$want_version' (status: $s)"
  [ "$g" = "$want_generation" ] || fail "$step: /status generation is '$g', expected $want_generation (status: $s)"
  [ "$r" = "$want_role" ] || fail "$step: /status role is '$r', expected '$want_role' (status: $s)"
  [ "$p" = serving ] || fail "$step: /status phase is '$p', expected 'serving' (status: $s)"
}

# Starts one sidecar slot the way kubelet would: the container, then its postStart hook (must exit 0).
# Sets MIGRATE_START_MS (host clock), MIGRATE_MS (the hook's wall time, podman exec included) and
# MIGRATE_OUT (what the hook printed).
MIGRATE_START_MS=0
MIGRATE_MS=0
MIGRATE_OUT=""
start_slot() {
  local name=$1 image=$2 version=$3 alt=$4
  log "start ${name%-"$SUFFIX"} from $image (SIDECARSET_VERSION=$version SIDECARSET_VERSION_ALT=$alt)"
  podman run -d --pod "$POD" --name "$name" --log-driver k8s-file --stop-timeout "$GRACE" \
    -v "$WORK/uds:/var/run/baton" -v "$WORK/config.yaml:/etc/baton/config.yaml:ro" \
    -e SIDECARSET_VERSION="$version" -e SIDECARSET_VERSION_ALT="$alt" \
    "$image" >/dev/null || fail "podman run of $name ($image) failed"
  local rc=0
  MIGRATE_START_MS=$(now_ms)
  MIGRATE_OUT=$(timeout "$MIGRATE_TIMEOUT" podman exec "$name" /usr/local/bin/baton migrate 2>&1) || rc=$?
  MIGRATE_MS=$(($(now_ms) - MIGRATE_START_MS))
  [ -z "$MIGRATE_OUT" ] || log "  postStart says: $MIGRATE_OUT"
  [ "$rc" -eq 0 ] || fail "postStart 'baton migrate' in $name ($image, $version/$alt) exited $rc after $(ms_fmt "$MIGRATE_MS"): $MIGRATE_OUT"
  log "  postStart exited 0 after $(ms_fmt "$MIGRATE_MS")"
  [ "$(state "$name" Status)" = running ] || fail "$name ($image) is not running after its postStart (status $(state "$name" Status), exit code $(state "$name" ExitCode))"
}

# Stops a slot as kubelet does on a reset (SIGTERM, GRACE seconds, then SIGKILL), requires exit code 0,
# saves its log and removes it. The slot must be gone within LIMIT seconds: counted from the SIGTERM, or, when
# it had already exited on its own (an old instance does once it has handed over and drained), from REF_MS
# (when its successor's container started: the takeover begins then, the postStart only watches it), so that
# a drain cut at drain_timeout fails either way.
# Sets STOP_MS (podman stop), STOP_SELF (yes/no) and STOP_EXIT_MS (the figure checked against LIMIT).
STOP_MS=0
STOP_SELF=no
STOP_EXIT_MS=0
stop_slot() {
  local name=$1 what=$2 limit=$3 tag=$4 ref_ms=${5:-}
  local before t0 code fin_ns
  before=$(state "$name" Status)
  STOP_SELF=no
  if [ "$before" = exited ]; then STOP_SELF=yes; fi
  t0=$(now_ms)
  podman stop -t "$GRACE" "$name" >/dev/null || fail "podman stop of $name ($what) failed"
  STOP_MS=$(($(now_ms) - t0))
  code=$(state "$name" ExitCode)
  fin_ns=$(state "$name" FinishedAt.UnixNano)
  save_log "$name" "$tag"
  STOP_EXIT_MS=$STOP_MS
  if [ "$STOP_SELF" = yes ]; then
    if ! [[ "$fin_ns" =~ ^[0-9]+$ ]] || [ -z "$ref_ms" ]; then
      fail "$name ($what) exited before the SIGTERM, and its exit time is unknown ('$fin_ns')"
    fi
    STOP_EXIT_MS=$((fin_ns / 1000000 - ref_ms))
    log "stopped ${name%-"$SUFFIX"} ($what): it had exited on its own $(ms_fmt "$STOP_EXIT_MS") after its successor's container started; podman stop took $(ms_fmt "$STOP_MS"); exit code $code"
  else
    log "stopped ${name%-"$SUFFIX"} ($what): exited $(ms_fmt "$STOP_MS") after SIGTERM, exit code $code"
  fi
  [ "$code" = 0 ] || fail "${name%-"$SUFFIX"} ($what) exited with code $code, expected 0 (see its log '$tag' below)"
  if [ "$STOP_EXIT_MS" -ge $((limit * 1000)) ]; then
    fail "${name%-"$SUFFIX"} ($what) took $(ms_fmt "$STOP_EXIT_MS") to exit ($([ "$STOP_SELF" = yes ] && echo "on its own, counted from its successor's start" || echo "after SIGTERM")); the limit is ${limit}s (drain_timeout ${DRAIN_TIMEOUT}s, grace ${GRACE}s)"
  fi
  podman rm "$name" >/dev/null || fail "podman rm $name failed"
}

rss_kb() {
  local pid
  pid=$(state "$1" Pid)
  if [[ "$pid" =~ ^[1-9][0-9]*$ ]] && [ -r "/proc/$pid/status" ]; then
    awk '/^VmRSS:/{print $2}' "/proc/$pid/status"
  else
    echo "?"
  fi
}

# The lines of the client's output that are JSON objects with the field KEY, as printed (see examples/loadgen.rs:
# "t" marks a progress line, "summary" the final one).
client_lines() {
  podman logs "$CLIENT" 2>/dev/null |
    jq -Rr --arg k "$1" '. as $line | fromjson? | select(type == "object" and has($k)) | $line' 2>/dev/null || true
}

# Last progress line of the client: "requests failed".
client_counts() {
  local line
  line=$(client_lines t | tail -n 1)
  [ -n "$line" ] || { echo "0 0"; return; }
  echo "$(jfield "$line" requests) $(jfield "$line" failed)"
}

# Last progress line of the client: "reopened opened" for its keep-alive connections.
client_reopened() {
  local line
  line=$(client_lines t | tail -n 1)
  [ -n "$line" ] || { echo "? ?"; return; }
  echo "$(jfield "$line" keepalive_reopened) $(jfield "$line" keepalive_opened)"
}

# Waits for the client's next progress line, so counts read afterwards cover everything up to now.
client_sync() {
  local n0 deadline
  n0=$(client_lines t | wc -l)
  deadline=$(($(now_ms) + 3000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    [ "$(client_lines t | wc -l)" -gt "$n0" ] && return 0
    sleep 0.2
  done
  fail "the client printed no progress line for 3 s (status $(state "$CLIENT" Status))"
}

require_running() {
  local c
  for c in "$@"; do
    [ "$(state "$c" Status)" = running ] || fail "container $c is not running (status $(state "$c" Status), exit code $(state "$c" ExitCode))"
  done
}

# Summary rows.
SIZES=()
RSS_ROWS=()
STEP_ROWS=()
COUNT_ROWS=()
record_rss() {
  local when=$1 img1=$2 img2=$3
  RSS_ROWS+=("$(printf '%-34s %-16s %9s kB   %-16s %9s kB' "$when" "$img1" "$(rss_kb "$P1")" "$img2" "$(rss_kb "$P2")")")
}
record_counts() {
  local when=$1 c
  client_sync
  c=$(client_counts)
  COUNT_ROWS+=("$(printf '%-34s %10s %8s' "$when" "${c% *}" "${c#* }")")
  log "client after $when: requests=${c% *} failed=${c#* }"
}

# ---------------------------------------------------------------------------------------------------------
# 0. Preconditions and images
command -v podman >/dev/null 2>&1 ||
  fail "podman is not installed; install it with: bash scripts/deps.sh test-pod"
podman info >/dev/null 2>&1 ||
  fail "'podman info' fails (CONTAINERS_CONF=$CONTAINERS_CONF); install podman with: bash scripts/deps.sh test-pod  ($(podman info 2>&1 | tail -n 1))"
[ "$(id -u)" -eq 0 ] || fail "run as root: the test enters the pod's network namespace with nsenter"
for tool in nsenter curl jq timeout awk od; do
  command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is required and not installed (Debian: bash scripts/deps.sh test-pod)"
done

image_exists() { podman image exists "$1" 2>/dev/null; }

T_START_MS=$(now_ms)
for v in "${VERSIONS[@]}"; do
  if [ "${POD_TEST_SKIP_BUILD:-0}" = 1 ] && image_exists "baton:$v" && image_exists "baton-empty:$v"; then
    log "POD_TEST_SKIP_BUILD=1: reusing baton:$v and baton-empty:$v"
  else
    log "building baton:$v and baton-empty:$v (scripts/image.sh)"
    VERSION=$v bash scripts/image.sh || fail "scripts/image.sh failed for VERSION=$v"
  fi
done
if [ "${POD_TEST_SKIP_BUILD:-0}" = 1 ] && image_exists "$TESTKIT"; then
  log "POD_TEST_SKIP_BUILD=1: reusing $TESTKIT"
else
  log "building $TESTKIT (static upstream and loadgen)"
  target=$(rustc -vV | sed -n 's/^host: //p')
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" --example upstream --example loadgen ||
    fail "building the static examples upstream and loadgen failed"
  ctx=$(mktemp -d)
  cp "target/$target/release/examples/upstream" "target/$target/release/examples/loadgen" "$ctx/"
  podman build -q -t "$TESTKIT" -f images/testpod/Containerfile "$ctx" >/dev/null || { rm -rf "$ctx"; fail "podman build of $TESTKIT failed"; }
  rm -rf "$ctx"
fi
for img in baton:v1 baton:v2 baton:v3 baton-empty:v1 baton-empty:v2 baton-empty:v3 "$TESTKIT"; do
  size=$(podman image inspect --format '{{.Size}}' "$img") || fail "image $img is missing"
  SIZES+=("$(printf '%-22s %10s bytes  (%s)' "$img" "$size" "$(awk -v b="$size" 'BEGIN{ if (b >= 1048576) printf "%.2f MiB", b/1048576; else printf "%.0f KiB", b/1024 }')")")
done

# ---------------------------------------------------------------------------------------------------------
# 1. The pod (T0)
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d)
chmod 0755 "$WORK"
mkdir -p "$WORK/uds" "$WORK/logs"
chmod 0777 "$WORK/uds" # like an emptyDir: writable by the sidecar's uid 65532
cat >"$WORK/config.yaml" <<'EOF'
listeners:
  - name: ingress
    address: 127.0.0.1:15006
    protocol: http
    cluster: app
clusters:
  - name: app
    endpoints: ["127.0.0.1:8080"]
admin:
  address: 127.0.0.1:15000
handoff:
  uds_dir: /var/run/baton
  timeout: 30s
  drain_timeout: 10s
EOF
chmod 0644 "$WORK/config.yaml"

T_START_MS=$(now_ms)
t_step=$(now_ms)
log "step 1 (T0): create pod $POD (network none: loopback only), temp dir $WORK"
podman pod create --network none --name "$POD" >/dev/null || fail "podman pod create failed"
podman pod start "$POD" >/dev/null || fail "podman pod start $POD failed"
infra=$(podman pod inspect --format '{{.InfraContainerID}}' "$POD")
INFRA_PID=$(podman inspect --format '{{.State.Pid}}' "$infra")
[[ "$INFRA_PID" =~ ^[1-9][0-9]*$ ]] || fail "cannot find the pid of the pod's infra container ($infra): '$INFRA_PID'"

log "start $APP (upstream on 127.0.0.1:8080)"
podman run -d --pod "$POD" --name "$APP" --log-driver k8s-file "$TESTKIT" \
  /usr/local/bin/upstream --listen 127.0.0.1:8080 >/dev/null || fail "podman run of the app container failed"
deadline=$(($(now_ms) + 10000))
until pod_curl 127.0.0.1:8080 / >/dev/null 2>&1; do
  [ "$(now_ms)" -lt "$deadline" ] || fail "the upstream did not answer on 127.0.0.1:8080 within 10 s"
  sleep 0.1
done

start_slot "$P1" baton:v1 1 0
start_slot "$P2" baton-empty:v1 0 1
wait_serving >/dev/null
check_status "step 1" v1 1 fresh
pod_curl 127.0.0.1:15006 / >/dev/null || fail "step 1: a request through baton (127.0.0.1:15006) failed"

log "start $CLIENT (loadgen: $KEEPALIVE_CLIENTS keep-alive + $NEWCONN_CLIENTS new-connection clients)"
podman run -d --pod "$POD" --name "$CLIENT" --log-driver k8s-file "$TESTKIT" \
  /usr/local/bin/loadgen --target 127.0.0.1:15006 --keepalive "$KEEPALIVE_CLIENTS" --newconn "$NEWCONN_CLIENTS" \
  --duration 10m --report-interval 1s >/dev/null || fail "podman run of the client container failed"
# Let load build up before the first upgrade.
sleep "$SOAK"
record_counts "step 1 (T0 create, load running)"
[ "$(client_counts | cut -d' ' -f1)" -gt 0 ] || fail "step 1: the client has completed no request"
require_running "$APP" "$P1" "$P2" "$CLIENT"
record_rss "after step 1 (T0)" baton:v1 baton-empty:v1
STEP_ROWS+=("$(printf '%-22s %9s %10s %9s %14s %10s %9s' "1 create (T0)" "$(ms_fmt $(($(now_ms) - t_step)))" "-" "-" "-" "-" "-")")

# ---------------------------------------------------------------------------------------------------------
# Upgrade: the new slot gets the new image and takes over in its postStart, then the old slot is reset to empty.
upgrade() {
  local label=$1 tu=$2 tr=$3 new=$4 old=$5 new_image=$6 new_version=$7 new_alt=$8 empty_image=$9 old_what=${10}
  local t0 idle_stop migrate_ms handoff drain drain_ms closed new_started_ns n_new n_old
  n_new=${new%-"$SUFFIX"}
  n_old=${old%-"$SUFFIX"}
  t0=$(now_ms)
  log "$tu upgrade: kubelet stops the empty $n_new and starts it from $new_image"
  stop_slot "$new" "empty slot" 5 "$n_new-empty-before-$tu"
  idle_stop=$STOP_MS
  start_slot "$new" "$new_image" "$new_version" "$new_alt"
  migrate_ms=$MIGRATE_MS
  new_started_ns=$(state "$new" StartedAt.UnixNano)
  [[ "$new_started_ns" =~ ^[0-9]+$ ]] || fail "$tu: cannot read the start time of $n_new ('$new_started_ns')"
  # "complete: generation 2: adopted [...], bound [], closed [] in 1 ms": the handoff as baton timed it.
  handoff=$(sed -n 's/.* in \([0-9]*\) ms$/\1 ms/p' <<<"$MIGRATE_OUT" | tail -n 1)
  grep -q '^baton migrate: complete' <<<"$MIGRATE_OUT" ||
    fail "$tu: the postStart of $n_new exited 0 but did not report a completed handoff: $MIGRATE_OUT"
  log "$tr reset: the controller gives $n_old the empty image; kubelet stops it (SIGTERM, ${GRACE}s grace)"
  stop_slot "$old" "$old_what" "$DRAIN_LIMIT" "$n_old-$old_what" "$((new_started_ns / 1000000))"
  # The old instance's own account of its drain (informational; the exit time above is what is checked).
  drain_ms=$(sed -n 's/.*drained; exiting elapsed_ms=\([0-9]*\).*/\1/p' "$WORK/logs/$n_old-$old_what.log" | tail -n 1)
  closed=$(sed -n 's/.*closed_at_deadline=\([0-9]*\).*/\1/p' "$WORK/logs/$n_old-$old_what.log" | tail -n 1)
  drain=${drain_ms:+$drain_ms ms}
  [ -z "$closed" ] || [ "$closed" = 0 ] ||
    fail "$tr: the old instance in $n_old closed $closed connection(s) at the drain deadline"
  local old_exit
  old_exit="$(ms_fmt "$STOP_EXIT_MS") $([ "$STOP_SELF" = yes ] && echo self || echo TERM)"
  start_slot "$old" "$empty_image" 0 "$new_version"
  log "$label done; the empty slot had stopped in $(ms_fmt "$idle_stop")"
  STEP_ROWS+=("$(printf '%-22s %9s %10s %9s %14s %10s %9s' "$label" "$(ms_fmt $(($(now_ms) - t0)))" "$(ms_fmt "$migrate_ms")" "${handoff:-?}" "$old_exit" "${drain:-?}" "$(ms_fmt "$idle_stop")")")
}

# 2. v1 -> v2: proxy-2 takes over (R2/1), proxy-1 is reset (0/R2).
log "step 2: upgrade v1 -> v2"
upgrade "2 v1->v2 (T1,T2)" T1 T2 "$P2" "$P1" baton:v2 "$R2" 1 baton-empty:v2 baton-v1
check_status "step 2" v2 2 takeover
require_running "$APP" "$P1" "$P2" "$CLIENT"
record_rss "after step 2 (T2)" baton-empty:v2 baton:v2
sleep "$SOAK"
record_counts "step 2 (v1->v2)"

# 3. v2 -> v3: proxy-1 takes over (R3/R2), proxy-2 is reset (0/R3).
log "step 3: upgrade v2 -> v3"
upgrade "3 v2->v3 (T3,T4)" T3 T4 "$P1" "$P2" baton:v3 "$R3" "$R2" baton-empty:v3 baton-v2
check_status "step 3" v3 3 takeover
require_running "$APP" "$P1" "$P2" "$CLIENT"
record_rss "after step 3 (T4)" baton:v3 baton-empty:v3
sleep "$SOAK"
record_counts "step 3 (v2->v3)"

# No request may have failed across the two upgrades.
read -r req_before_crash failed_before_crash < <(client_counts)
[ "$req_before_crash" -gt 0 ] || fail "the client completed no request in steps 1-3"
[ "$failed_before_crash" -eq 0 ] ||
  fail "$failed_before_crash of $req_before_crash requests failed during steps 1-3 (upgrades v1->v2->v3); client log: $(client_lines t | tail -n 3 | tr '\n' ' ')"
# Live connection migration: no keep-alive connection was closed under its client by the two upgrades.
read -r reopened_before_crash opened_before_crash < <(client_reopened)
[ "$reopened_before_crash" = "0" ] ||
  fail "$reopened_before_crash keep-alive connections were reopened during steps 1-3 (they should move to the new instance); client log: $(client_lines t | tail -n 1)"
log "steps 1-3: $req_before_crash requests, 0 failed; keep-alive connections: $opened_before_crash opened, 0 reopened"

# ---------------------------------------------------------------------------------------------------------
# 4. Crash of the working slot: SIGKILL, then the restart kubelet would do, with the env it would see (R3/0).
log "step 4: crash: SIGKILL $P1 (the working slot, baton:v3)"
t_step=$(now_ms)
podman kill -s KILL "$P1" >/dev/null || fail "podman kill -s KILL $P1 failed"
podman wait "$P1" >/dev/null 2>&1 || true
save_log "$P1" "proxy-1-baton-v3-killed"
podman rm -f "$P1" >/dev/null || fail "podman rm $P1 failed"
lines_at_restart=$(client_lines t | wc -l)
t_restart=$(now_ms)
start_slot "$P1" baton:v3 "$R3" 0
crash_migrate=$MIGRATE_MS
wait_serving >/dev/null
check_status "step 4" v3 1 fresh
# Traffic must resume: a progress interval, after the restart, with requests completed and none failed.
resume_ms=""
deadline=$((t_restart + RESUME_LIMIT * 1000))
while [ "$(now_ms)" -lt "$deadline" ]; do
  if client_lines t | tail -n +"$((lines_at_restart + 1))" | jq -r '"\(.requests) \(.failed)"' |
    awk '{ r=$1; f=$2; if (NR > 1 && r > pr && f == pf) { found=1 } pr=r; pf=f } END { exit !found }'; then
    resume_ms=$(($(now_ms) - t_restart))
    break
  fi
  sleep 0.2
done
[ -n "$resume_ms" ] || fail "step 4: traffic did not resume within ${RESUME_LIMIT}s of restarting $P1 (no 1 s interval with completed requests and no failures); last client lines: $(client_lines t | tail -n 3 | tr '\n' ' ')"
pod_curl 127.0.0.1:15006 / >/dev/null || fail "step 4: a request through the restarted baton failed"
log "step 4: traffic resumed (a clean 1 s interval) within $(ms_fmt "$resume_ms") of the restart"
require_running "$APP" "$P1" "$P2" "$CLIENT"
record_rss "after step 4 (crash + restart)" baton:v3 baton-empty:v3
record_counts "step 4 (crash + restart)"
STEP_ROWS+=("$(printf '%-22s %9s %10s %9s %14s %10s %9s' "4 crash + restart" "$(ms_fmt $(($(now_ms) - t_step)))" "$(ms_fmt "$crash_migrate")" "-" "SIGKILL" "-" "-")")

# ---------------------------------------------------------------------------------------------------------
# The client's final summary (counts include the failures of the deliberate crash in step 4).
podman stop -t 10 "$CLIENT" >/dev/null || fail "podman stop of the client failed"
summary=$(client_lines summary | tail -n 1)
[ -n "$summary" ] || fail "the client printed no summary line on SIGTERM"
total_req=$(jfield "$summary" requests)
total_failed=$(jfield "$summary" failed)
crash_failed=$((total_failed - failed_before_crash))
errors=$(jq -c '.errors // empty' <<<"$summary" 2>/dev/null || true)
total_ms=$(($(now_ms) - T_START_MS))

echo
echo "================================ pod-test summary ($POD) ================================"
echo "images (podman image inspect .Size)"
for row in "${SIZES[@]}"; do echo "  $row"; done
echo
echo "RSS of the two slots (VmRSS of each container's pid 1, read from the host)"
printf '  %-34s %-16s %12s   %-16s %12s\n' "when" "proxy-1" "VmRSS" "proxy-2" "VmRSS"
for row in "${RSS_ROWS[@]}"; do echo "  $row"; done
echo
echo "steps (total: wall time of the step; postStart: 'podman exec ... baton migrate' of the new slot, podman exec"
echo "       included; handoff: as baton timed it; old exit: the old slot's exit, 'self' = on its own after handing"
echo "       over, counted from the new slot's container start, 'TERM' = after podman stop's SIGTERM; drain: the old"
echo "       instance's own drain time from its log; empty stop: SIGTERM of the empty slot before its image changed)"
printf '  %-22s %9s %10s %9s %14s %10s %9s\n' "step" "total" "postStart" "handoff" "old exit" "drain" "empty stop"
for row in "${STEP_ROWS[@]}"; do echo "  $row"; done
echo
echo "client (loadgen, $KEEPALIVE_CLIENTS keep-alive + $NEWCONN_CLIENTS new-connection clients; cumulative)"
printf '  %-34s %10s %8s\n' "after" "requests" "failed"
for row in "${COUNT_ROWS[@]}"; do echo "  $row"; done
printf '  %-34s %10s %8s\n' "final summary" "$total_req" "$total_failed"
echo "  steps 1-3 (two hot upgrades): $req_before_crash requests, $failed_before_crash failed"
echo "  step 4 (deliberate SIGKILL of the serving slot): $crash_failed failed, errors $errors;"
echo "         traffic resumed within $(ms_fmt "$resume_ms") of the restart"
echo "  test time (without image builds): $(ms_fmt "$total_ms")"
echo "=========================================================================================="
echo "pod-test: PASS"
