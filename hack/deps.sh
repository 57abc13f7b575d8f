#!/usr/bin/env bash
# Installs the Debian packages jvol's tests and demo use, when missing:
# mkfs and fsck for ext4 and xfs, losetup and mount; with --bench what
# hack/bench.sh needs, with --cluster what hack/cluster.sh needs.
set -euo pipefail
want=(e2fsprogs xfsprogs util-linux mount)
[ "${1:-}" = "--bench" ] && want+=(fio python3 bc)
# hack/cluster.sh: containerd and runc, CNI plugins, dockerd for the
# Dockerfile (run only while building), image packing,
# debootstrap for the jvol image's Debian, busybox for test pods.
[ "${1:-}" = "--cluster" ] && want+=(containerd runc containernetworking-plugins iptables docker.io umoci skopeo debootstrap busybox-static openssl curl)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
modprobe loop 2>/dev/null || true
modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] && [ -e /dev/loop-control ] || { echo "deps: this kernel lacks FUSE or loop devices" >&2; exit 1; }
