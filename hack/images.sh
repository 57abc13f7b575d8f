#!/usr/bin/env bash
# Builds the images the local cluster runs, without a registry, as
# docker-archive tars in OUT (which hack/cluster.sh imports into containerd):
#
#   jvol.tar         ghcr.io/jvol-io/jvol:TAG, from the Dockerfile, by
#                    hack/dockerfile-build.sh on the cluster's containerd
#   pause.tar        registry.k8s.io/pause:3.10.1  hack/pause
#   busybox.tar      localhost/busybox:e2e  Debian's busybox-static, for test pods
#   csi-provisioner.tar, csi-resizer.tar, csi-snapshotter.tar
#                    under their registry.k8s.io names and
#                    tags, the sidecars built by hack/tools.sh
#
# The images without a Dockerfile are single layers packed by umoci and
# written by skopeo.
#
# Usage: hack/images.sh OUT TAG CONTAINERD_SOCK
set -euo pipefail
out=$1 tag=$2 sock=$3
hack=$(cd "$(dirname "$0")" && pwd)
GO=${GO:-$("$hack/ensure-go.sh")/go}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0

# image NAME REF ROOTFS ENTRYPOINT [USER]: packs ROOTFS as one layer into
# $out/NAME.tar, named REF.
image() {
  local name=$1 ref=$2 rootfs=$3 entrypoint=$4 user=${5:-0:0}
  local layout=$work/oci-$name
  umoci init --layout "$layout"
  umoci new --image "$layout:img"
  umoci unpack --image "$layout:img" "$work/bundle-$name" >/dev/null
  cp -a "$rootfs/." "$work/bundle-$name/rootfs/"
  umoci repack --image "$layout:img" "$work/bundle-$name"
  umoci config --image "$layout:img" --os linux --architecture amd64 \
    --config.entrypoint "$entrypoint" --config.user "$user" --config.env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
  rm -f "$out/$name.tar"
  skopeo copy --quiet "oci:$layout:img" "docker-archive:$out/$name.tar:$ref"
  rm -rf "$layout" "$work/bundle-$name"
}

echo "images.sh: jvol from the Dockerfile" >&2
"$hack/dockerfile-build.sh" "$sock" "$out/jvol.tar" "ghcr.io/jvol-io/jvol:$tag"

echo "images.sh: pause, busybox, sidecars" >&2
mkdir -p "$work/pause"
"$GO" build -C "$hack/.." -trimpath -ldflags "-s -w" -o "$work/pause/pause" ./hack/pause
image pause registry.k8s.io/pause:3.10.1 "$work/pause" /pause 65535:65535

mkdir -p "$work/busybox/bin" "$work/busybox/etc" "$work/busybox/tmp"
cp /bin/busybox "$work/busybox/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -s busybox "$work/busybox/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/busybox/etc/passwd"
echo 'root:x:0:' > "$work/busybox/etc/group"
image busybox localhost/busybox:e2e "$work/busybox" /bin/sh

for s in csi-provisioner csi-resizer csi-snapshotter; do
  bin=$("$hack/tools.sh" "$s")
  mkdir -p "$work/$s" && cp "$bin" "$work/$s/"
  # The version ends the name of the binary's cache directory.
  image "$s" "registry.k8s.io/sig-storage/$s:$(basename "$(dirname "$bin")" | sed 's/.*-\(v[0-9][^-]*\)$/\1/')" "$work/$s" "/$s"
done
ls -la "$out" >&2
