#!/usr/bin/env bash
# Builds the jvol image from the Dockerfile, on a machine without a Docker
# engine or registry: Debian's dockerd runs for the length of the build on
# the local cluster's containerd, with base images made here:
#
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, imported
#   golang:1.26-bookworm   that, with this machine's Go toolchain in /usr/local/go
#                          and its own certificate authorities (a machine whose
#                          egress goes through a TLS proxy trusts that proxy's CA)
#
# Both are kept in dockerd's data root under the cache, as are the build's
# layers (the `go mod download` layer survives a code change). The Dockerfile
# itself reaches the Go module proxy and Debian's mirror over the host network.
#
# Usage: hack/dockerfile-build.sh CONTAINERD_SOCK OUT.tar IMAGE
set -euo pipefail
sock=$1 out=$2 ref=$3
hack=$(cd "$(dirname "$0")" && pwd)
GO=${GO:-$("$hack/ensure-go.sh")/go}
cache=${JVOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jvol}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
goroot=$("$GO" env GOROOT)
golang=$(sed -n 's/^FROM \(golang:[^ ]*\).*/\1/p' "$hack/../Dockerfile") # the tag the Dockerfile names
run=/run/jvol-dockerd
data=$cache/docker
docker() { /usr/bin/docker --host "unix://$run/docker.sock" "$@"; }

if [ -e "$run" ]; then
  echo "dockerfile-build.sh: $run exists: another build runs, or one was killed (make down clears it)" >&2
  exit 1
fi
log=$(dirname "$out")/dockerd.log
mkdir -p "$run" "$data"
/usr/sbin/dockerd --containerd="$sock" --data-root="$data" --exec-root="$run/exec" \
  --pidfile="$run/dockerd.pid" --host="unix://$run/docker.sock" \
  --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  >"$log" 2>&1 &
pid=$!
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true # dockerd is our child: this waits for it to end
  # What dockerd leaves mounted under its roots (its network namespace, say).
  awk -v a="$data" -v b="$run" 'index($2, a"/")==1 || index($2, b"/")==1 {print $2}' /proc/self/mounts |
    sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf --one-file-system "$run"
}
trap stop EXIT
for ((i = 0; i < 120; i++)); do
  docker version >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "dockerfile-build.sh: dockerd exited:" >&2; tail -n 20 "$log" >&2; exit 1; }
  sleep 0.5
done
docker version >/dev/null

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  echo "dockerfile-build.sh: debian:bookworm-slim from debootstrap (once)" >&2
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - debian:bookworm-slim >/dev/null
  rm -rf "$root"
fi
if ! docker image inspect "$golang" >/dev/null 2>&1; then
  echo "dockerfile-build.sh: $golang from $goroot (once)" >&2
  ctx=$(mktemp -d)
  cp -a "$goroot" "$ctx/go"
  mkdir "$ctx/ca" && cp -L /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git && rm -rf /var/lib/apt/lists/*
COPY ca /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY go /usr/local/go
ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOPATH=/go
EOF
  DOCKER_BUILDKIT=0 docker build --network=host -q -t "$golang" "$ctx" >/dev/null
  rm -rf "$ctx"
fi

echo "dockerfile-build.sh: docker build $ref" >&2
DOCKER_BUILDKIT=0 docker build --network=host -t "$ref" "$hack/.." >&2
docker save -o "$out" "$ref"
