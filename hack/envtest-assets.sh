#!/usr/bin/env bash
# Builds the control plane envtest needs (kube-apiserver and etcd) from the Go
# module proxy, at pinned versions, and prints the directory holding them (what
# KUBEBUILDER_ASSETS wants). Results are cached by version: the first run
# costs a few minutes of compiling, later runs nothing.
#
# No binary download site is reachable from our machines, only the Go module
# proxy, so both are built from source through throwaway wrapper modules.
set -euo pipefail
K8S_VERSION=v1.34.4
STAGING_VERSION=v0.34.4
ETCD_VERSION=v3.6.4

GO=${GO:-$("$(dirname "$0")/ensure-go.sh")/go}
out=${JVOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jvol}/envtest-$K8S_VERSION-etcd-$ETCD_VERSION
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ]; then
  echo "$out"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$out.tmp"

moddir() { "$GO" mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }

# kube-apiserver: k8s.io/kubernetes points its staging modules at local
# directories; point them at their published versions instead, and reuse the
# module's go.sum so no checksum has to be looked up.
echo "envtest-assets: building kube-apiserver $K8S_VERSION (a few minutes, once)" >&2
mkdir "$work/k8s" && cd "$work/k8s"
src=$(moddir "k8s.io/kubernetes@$K8S_VERSION")
{
  echo "module local/kubeapiserver"
  echo "go $(sed -n 's/^go //p' "$src/go.mod" | head -1)"
  echo "require k8s.io/kubernetes $K8S_VERSION"
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$STAGING_VERSION"'#p' "$src/go.mod"
} > go.mod
cp "$src/go.sum" go.sum && chmod u+w go.sum
printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' > tools.go
"$GO" mod tidy >&2
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=34 -X $p.gitTreeState=clean"
done
"$GO" build -trimpath -ldflags "$ld" -o "$out.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver

echo "envtest-assets: building etcd $ETCD_VERSION" >&2
mkdir "$work/etcd" && cd "$work/etcd"
printf 'module local/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go
"$GO" mod tidy >&2
"$GO" build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" .

rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
