#!/usr/bin/env bash
# Installs the Debian packages a make target needs, and only the missing ones.
#
#   scripts/deps.sh TARGET...    TARGET: unit, test-pod, bench, test (= unit test-pod bench), ci (= test + make)
#   scripts/deps.sh --list       prints every target's packages
#
# As root: `apt-get update` once, then `apt-get install --no-install-recommends` of what is missing, without
# stdin or prompts; fails if a package is still missing afterwards. Not root: when something is missing, prints
# the packages and the command that installs them, and exits 1. Nothing missing: prints nothing, exits 0.
# Cargo and the Rust toolchain are not installed here (see README.md).
set -euo pipefail

# What each target needs, as "package probe": the package is present when the probe is a command (on PATH or in
# /usr/sbin, /sbin), an existing absolute path, or, for "-", when dpkg says the package is installed.
unit_needs=(
  "prometheus promtool"   # tests/operability.rs: promtool check metrics
  "procps kill"           # tests/common/process.rs, library_example.rs, manifests.rs: kill -TERM
  "util-linux prlimit"    # tests/common/process.rs: Baton::spawn_with_nofile
  "python3-grpcio /usr/lib/python3/dist-packages/grpc/__init__.py"  # tests/grpc.rs: a gRPC C-core client
  "curl curl"             # tests/streams.rs: a real HTTP/1.1 client for streams and uploads
)
test_pod_needs=(          # scripts/pod-test.sh
  "podman podman"
  "runc runc"             # images/containers.conf: runtime = "runc"
  "catatonit -"           # podman's init for the pod's infra container
  "curl curl"             # requests inside the pod's network namespace
  "jq jq"                 # loadgen reports and /status
  "util-linux nsenter"
)
bench_needs=(             # scripts/bench.sh
  "nginx nginx"
  "libnginx-mod-stream /usr/lib/nginx/modules/ngx_stream_module.so"
  "haproxy haproxy"
  "wrk wrk"
  "nghttp2-client h2load"
  "curl curl"
  "jq jq"
  "fonts-dejavu-core /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
)
ci_needs=("make make")    # .ci/run: `make` cannot install make

needs_of() {
  case $1 in
    unit) printf '%s\n' "${unit_needs[@]}" ;;
    test-pod) printf '%s\n' "${test_pod_needs[@]}" ;;
    bench | bench-smoke) printf '%s\n' "${bench_needs[@]}" ;;
    test) needs_of unit && needs_of test-pod && needs_of bench ;;
    ci) printf '%s\n' "${ci_needs[@]}" && needs_of test ;;
    *) return 1 ;;
  esac
}

present() { # PACKAGE PROBE
  case $2 in
    -) [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ] ;;
    /*) [ -e "$2" ] ;;
    *) command -v "$2" >/dev/null 2>&1 || [ -x "/usr/sbin/$2" ] || [ -x "/sbin/$2" ] ;; # sbin: not on a user's PATH
  esac
}

usage() {
  echo "usage: $0 TARGET... (unit, test-pod, bench, test, ci) | --list" >&2
  exit 2
}

[ $# -gt 0 ] || usage
if [ "$1" = --list ]; then
  for target in unit test-pod bench ci; do
    printf '%-9s %s\n' "$target:" "$(needs_of "$target" | awk '{print $1}' | sort -u | tr '\n' ' ')"
  done
  exit 0
fi
for target in "$@"; do
  needs_of "$target" >/dev/null || { echo "deps: unknown target '$target'" >&2; usage; }
done

# The missing packages, each once, in the order first needed.
missing() {
  local target pkg probe
  for target in "$@"; do
    needs_of "$target"
  done | while read -r pkg probe; do
    present "$pkg" "$probe" || echo "$pkg"
  done | awk '!seen[$0]++' | tr '\n' ' '
}

need=$(missing "$@")
[ -n "$need" ] || exit 0
need=${need% }

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: Debian packages needed for '$*' are not installed: $need" >&2
  echo "deps: install them as root: apt-get install -y --no-install-recommends $need   (or: sudo bash $0 $*)" >&2
  exit 1
fi

# One install at a time (make test and its sub-targets may call this concurrently with make -j); whoever waited
# looks again, the other may have installed everything.
lockdir=/run/lock
[ -d "$lockdir" ] || lockdir=${TMPDIR:-/tmp}
exec 9>"$lockdir/baton-deps.lock"
flock 9
need=$(missing "$@")
[ -n "$need" ] || exit 0
need=${need% }

echo "deps: installing $need"
log=$(mktemp "${TMPDIR:-/tmp}/baton-deps.XXXXXX")
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # one word per package
if ! apt-get update -qq </dev/null >"$log" 2>&1 ||
  ! apt-get install -y -qq --no-install-recommends $need </dev/null >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "deps: apt-get failed installing: $need" >&2
  exit 1
fi

still=$(missing "$@")
if [ -n "$still" ]; then
  echo "deps: still missing after the install: ${still% }" >&2
  exit 1
fi
