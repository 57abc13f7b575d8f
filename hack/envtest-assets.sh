#!/usr/bin/env bash
# Prints a directory holding the control plane envtest needs, kube-apiserver
# and etcd (what KUBEBUILDER_ASSETS wants), built once by hack/tools.sh at
# the versions pinned there.
set -euo pipefail
hack=$(cd "$(dirname "$0")" && pwd)
out=${JVOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jvol}/envtest
mkdir -p "$out"
for tool in kube-apiserver etcd; do
  ln -sfn "$("$hack/tools.sh" "$tool")" "$out/$tool"
done
echo "$out"
