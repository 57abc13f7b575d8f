#!/usr/bin/env bash
# Runs helm at a pinned version, built once from the Go module proxy and
# cached by version (no release download site is reachable here).
# Usage: hack/helm.sh ARGS...
set -euo pipefail
HELM_VERSION=v3.19.0
GO=${GO:-$("$(dirname "$0")/ensure-go.sh")/go}
bin=${JVOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jvol}/helm-$HELM_VERSION/helm
if [ ! -x "$bin" ]; then
  echo "helm.sh: building helm $HELM_VERSION (a minute or two, once)" >&2
  GOBIN=$(dirname "$bin") CGO_ENABLED=0 "$GO" install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
exec "$bin" "$@"
