#!/usr/bin/env bash
# The end-to-end suite: brings the local cluster up (hack/cluster.sh, jvol
# installed with Helm), runs test/e2e against it, brings it down and checks
# that nothing is left behind: no cluster process, mount, loop device,
# network device or directory. Root only. A cluster already up (make up) is
# refused rather than disturbed.
set -euo pipefail
hack=$(cd "$(dirname "$0")" && pwd)
export GO=${GO:-$("$hack/ensure-go.sh")/go}
export JVOL_CLUSTER=${JVOL_CLUSTER:-/var/lib/jvol-cluster}
if [ -e "$JVOL_CLUSTER" ]; then
  echo "e2e.sh: a cluster is up in $JVOL_CLUSTER; run make down first" >&2
  exit 1
fi
start=$SECONDS
rc=0
logs=/tmp/jvol-e2e-logs
# keep_logs: the cluster's and the pods' logs outlive the cluster.
keep_logs() {
  rm -rf "$logs" && mkdir -p "$logs"
  cp -r "$JVOL_CLUSTER/logs/." "$logs/" 2>/dev/null || true
  cp -r /var/log/pods "$logs/" 2>/dev/null || true
  echo "e2e.sh: cluster and pod logs kept in $logs" >&2
}
trap 'keep_logs; "$hack/cluster.sh" down' EXIT
"$hack/cluster.sh" up
echo "e2e.sh: cluster up after $((SECONDS - start))s" >&2

export KUBECONFIG=$JVOL_CLUSTER/pki/admin.kubeconfig KUBECTL=$("$hack/tools.sh" kubectl) HELM=$hack/helm.sh
set +e
"$GO" test -C "$hack/.." -tags e2e -count=1 -timeout 30m -v ./test/e2e 2>&1 | tee "$JVOL_CLUSTER/logs/e2e.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || keep_logs

trap - EXIT
"$hack/cluster.sh" down
left=$(
  pgrep -a -f "$JVOL_CLUSTER|/var/lib/kubelet|$(dirname "$KUBECTL")/" || true
  grep -E " (/var/lib/kubelet|/var/lib/jvol|$JVOL_CLUSTER)[/ ]" /proc/self/mountinfo || true
  losetup -l -n -O NAME,BACK-FILE | grep -E ' (/var/lib/jvol/|/pvc-)' || true
  ip -o link show jvolcni0 2>/dev/null || true
  ip -o addr show dev lo | grep ' 10.254.0.1/' || true
  ls -d "$JVOL_CLUSTER" /var/lib/kubelet /var/lib/jvol /var/log/pods /run/jvol-dockerd 2>/dev/null || true
)
if [ -n "$left" ]; then
  printf 'e2e.sh: make down left these behind:\n%s\n' "$left" >&2
  rc=1
fi
echo "e2e.sh: done after $((SECONDS - start))s" >&2
exit "$rc"
