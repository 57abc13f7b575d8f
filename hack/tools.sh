#!/usr/bin/env bash
# Builds the pinned tools of a local cluster from the Go module proxy, once,
# and prints the path of each binary asked for. No release download site is
# reachable from our machines, only the Go module proxy, so everything is
# built from source, through throwaway wrapper modules where a module's own
# go.mod has replace directives. Results are cached by version under
# ${JVOL_CACHE:-~/.cache/jvol}: the first run costs minutes, later ones none.
#
# Usage: hack/tools.sh TOOL...
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl
#   etcd crictl csi-provisioner csi-resizer csi-snapshotter snapshot-controller
#   snapshot-crds (a directory: the VolumeSnapshot CRDs of the snapshotter's
#   client module)
set -euo pipefail
shopt -s inherit_errexit # set -e inside $(...) too: a failed build must not be cached
K8S_VERSION=v1.34.4
STAGING_VERSION=v0.34.4
ETCD_VERSION=v3.6.4
CRICTL_VERSION=v1.34.0
PROVISIONER_VERSION=v5.3.0
RESIZER_VERSION=v1.14.0
SNAPSHOTTER_VERSION=v8.4.0
SNAPSHOTTER=github.com/kubernetes-csi/external-snapshotter

GO=${GO:-$("$(dirname "$0")/ensure-go.sh")/go}
cache=${JVOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jvol}
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# build ARGS...: go build -v, showing progress as a count of packages
# compiled, and errors as they come.
build() {
  "$GO" build -v "$@" 2>&1 | awk '
    /^#|: / { print > "/dev/stderr"; next }
    { if (++n % 200 == 0) printf "tools.sh:   %d packages compiled\n", n > "/dev/stderr" }'
}

moddir() { "$GO" mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }

# wrapper DIR MODULE VERSION REPLACES PKG...: a module that requires MODULE and
# imports PKG..., with MODULE's go.sum (so no checksum has to be looked up) and
# the replace directives that REPLACES (a command reading MODULE's go.mod)
# prints.
wrapper() {
  local dir=$1 mod=$2 ver=$3 replaces=$4 src
  shift 4
  src=$(moddir "$mod@$ver")
  mkdir -p "$dir" && cd "$dir"
  {
    echo "module local/wrapper"
    echo "go $(sed -n 's/^go //p' "$src/go.mod" | head -1)"
    echo "require $mod $ver"
    $replaces "$src/go.mod"
  } > go.mod
  cp "$src/go.sum" go.sum && chmod u+w go.sum
  { echo "//go:build tools"; echo "package tools"; for p in "$@"; do echo "import _ \"$p\""; done; } > tools.go
  "$GO" mod tidy >&2
}

# kubernetes points its staging modules at local directories; point them at
# their published versions instead.
k8s_replaces() {
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$STAGING_VERSION"'#p' "$1"
}
# The sidecars' own replace lines (single or block form), without local paths.
copy_replaces() {
  awk '/^replace \(/{b=1;next} b&&/^\)/{b=0;next} b{print "replace " $0; next} /^replace /{print}' "$1" | grep -v '=> \.' || true
}

build_kubernetes() { # OUT
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=34 -X $p.gitTreeState=clean"
  done
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl) pkgs=()
  for p in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$p"); done
  wrapper "$work/k8s" k8s.io/kubernetes "$K8S_VERSION" k8s_replaces "${pkgs[@]}"
  build -trimpath -ldflags "$ld" -o "$1/" "${pkgs[@]}"
}

build_etcd() { # OUT
  mkdir -p "$work/etcd" && cd "$work/etcd"
  printf 'module local/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go
  "$GO" mod tidy >&2
  build -trimpath -ldflags "-s -w" -o "$1/etcd" .
}

# build_wrapped OUT NAME MODULE VERSION: MODULE's cmd/NAME through a wrapper
# module with MODULE's replace directives. (`go install m@v` would do for
# some, but it asks the proxy for the module's version list, which the proxy
# refuses for cri-tools.)
build_wrapped() {
  wrapper "$work/$2" "$3" "$4" copy_replaces "$3/cmd/$2"
  build -trimpath -ldflags "-s -w -X main.version=$4" -o "$1/$2" "$3/cmd/$2"
}

# external-snapshotter uses its client module from its own tree; the
# wrapper takes the published one of the same version.
snapshotter_replaces() {
  copy_replaces "$1"
  echo "replace $SNAPSHOTTER/client/v8 => $SNAPSHOTTER/client/v8 $SNAPSHOTTER_VERSION"
}

build_snapshotter() { # OUT: csi-snapshotter and snapshot-controller
  local cmds=("$SNAPSHOTTER/v8/cmd/csi-snapshotter" "$SNAPSHOTTER/v8/cmd/snapshot-controller")
  wrapper "$work/snapshotter" "$SNAPSHOTTER/v8" "$SNAPSHOTTER_VERSION" snapshotter_replaces "${cmds[@]}"
  build -trimpath -ldflags "-s -w -X main.version=$SNAPSHOTTER_VERSION" -o "$1/" "${cmds[@]}"
}

# ensure KEY BUILD ARGS...: runs BUILD OUT ARGS... once, into the cache
# directory KEY, and prints that directory.
ensure() {
  local key=$1 build=$2 out
  shift 2
  out=$cache/$key
  [ -d "$out" ] && { echo "$out"; return; }
  echo "tools.sh: building $key (minutes, once)" >&2
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  if ! (work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT && "$build" "$out.tmp" "$@" >&2); then
    rm -rf "$out.tmp"
    echo "tools.sh: building $key failed" >&2
    return 1
  fi
  mv "$out.tmp" "$out"
  echo "$out"
}

for tool in "$@"; do
  case $tool in
  kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kubectl)
    dir=$(ensure "kubernetes-$K8S_VERSION" build_kubernetes) ;;
  etcd) dir=$(ensure "etcd-$ETCD_VERSION" build_etcd) ;;
  crictl)
    dir=$(GONOSUMDB=sigs.k8s.io/cri-tools ensure "crictl-$CRICTL_VERSION" build_wrapped crictl \
      sigs.k8s.io/cri-tools "$CRICTL_VERSION") ;;
  csi-provisioner)
    dir=$(ensure "csi-provisioner-$PROVISIONER_VERSION" build_wrapped csi-provisioner \
      github.com/kubernetes-csi/external-provisioner/v5 "$PROVISIONER_VERSION") ;;
  csi-resizer)
    dir=$(ensure "csi-resizer-$RESIZER_VERSION" build_wrapped csi-resizer \
      github.com/kubernetes-csi/external-resizer "$RESIZER_VERSION") ;;
  csi-snapshotter | snapshot-controller)
    dir=$(ensure "external-snapshotter-$SNAPSHOTTER_VERSION" build_snapshotter) ;;
  snapshot-crds)
    dir=$(moddir "$SNAPSHOTTER/client/v8@$SNAPSHOTTER_VERSION")/config/crd
    [ -f "$dir/snapshot.storage.k8s.io_volumesnapshots.yaml" ] || { echo "tools.sh: no snapshot CRDs in $dir" >&2; exit 1; }
    echo "$dir"
    continue ;;
  *) echo "tools.sh: unknown tool $tool" >&2; exit 2 ;;
  esac
  [ -x "$dir/$tool" ] || { echo "tools.sh: $dir has no $tool; remove it to build again" >&2; exit 1; }
  echo "$dir/$tool"
done
