#!/usr/bin/env bash
# Builds the two container images: baton:$VERSION (the sidecar) and baton-empty:$VERSION (the empty slot).
# The version string is compiled into the sidecar binary (BATON_VERSION), so /status tells releases apart.
# Uses podman, or docker when that is what the machine has.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${VERSION:-dev}
TARGET=${TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
CARGO=${CARGO:-cargo}

export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/images/containers.conf}
engine=""
for e in podman docker; do
  if command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1; then engine=$e; break; fi
done
if [ -z "$engine" ]; then
  echo "image.sh: neither podman nor docker can run here; install podman (Debian: apt-get install podman runc catatonit)" >&2
  exit 1
fi

# Static binaries: the images are FROM scratch.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
BATON_VERSION="$VERSION" "$CARGO" build --release --locked --target "$TARGET" -p baton --bin baton
"$CARGO" build --release --locked --target "$TARGET" --manifest-path images/empty/Cargo.toml

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/sidecar" "$ctx/empty"
cp "target/$TARGET/release/baton" "$ctx/sidecar/baton"
cp "images/empty/target/$TARGET/release/baton-empty" "$ctx/empty/baton-empty"

"$engine" build -q -t "baton:$VERSION" -f images/sidecar/Containerfile "$ctx/sidecar" >/dev/null
"$engine" build -q -t "baton-empty:$VERSION" -f images/empty/Containerfile "$ctx/empty" >/dev/null
for img in "baton:$VERSION" "baton-empty:$VERSION"; do
  size=$("$engine" image inspect --format '{{.Size}}' "$img")
  printf '%-22s %8d bytes\n' "$img" "$size"
done
