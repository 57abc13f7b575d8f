#!/usr/bin/env bash
# Renders the chart with its default values into plain manifests, for those
# who install without Helm: deploy/jvol.yaml (CRDs included, namespace
# jvol-system). `make verify` fails when the committed file drifts.
# Usage: hack/render-deploy.sh [OUT] (default deploy/jvol.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-deploy/jvol.yaml}
{
  echo "# Rendered from charts/jvol by hack/render-deploy.sh; do not edit."
  echo "# Install: kubectl create namespace jvol-system && kubectl apply -f deploy/jvol.yaml"
  hack/helm.sh template jvol charts/jvol --namespace jvol-system --include-crds --kube-version v1.34.4
} > "$out"
