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
# digest: what a failed run's reader needs first, printed last (CI shows
# the end of the output): the failures, and the errors jvol and its
# sidecars logged.
digest() {
  echo "e2e.sh: failures:" >&2
  grep -E -- '--- FAIL|not after|_test.go:[0-9]+: ' "$logs/e2e.log" 2>/dev/null | grep -v 'deleted in\|longest write' | tail -n 15 >&2 || true
  echo "e2e.sh: the last errors jvol's pods logged:" >&2
  find "$logs/pods" -path '*kube-system_jvol-*' -name '*.log' -print0 2>/dev/null |
    xargs -0 -r grep -h -E '^\S+ std(out|err) F E[0-9]{4} ' 2>/dev/null |
    sort | cut -d' ' -f4- | cut -c1-300 | tail -n 25 >&2 || true
}
trap 'keep_logs; "$hack/cluster.sh" down' EXIT
"$hack/cluster.sh" up
echo "e2e.sh: cluster up after $((SECONDS - start))s" >&2

export KUBECONFIG=$JVOL_CLUSTER/pki/admin.kubeconfig KUBECTL=$("$hack/tools.sh" kubectl) HELM=$hack/helm.sh
# Pods' logs go with their pods: copy them as the tests go, for a failure's
# reader.
mkdir -p "$JVOL_CLUSTER/logs/pods"
(while :; do cp -ru /var/log/pods/. "$JVOL_CLUSTER/logs/pods/" 2>/dev/null; sleep 2; done) &
copier=$!
set +e
"$GO" test -C "$hack/.." -tags e2e -count=1 -timeout 30m -v ./test/e2e 2>&1 | tee "$JVOL_CLUSTER/logs/e2e.log"
rc=${PIPESTATUS[0]}
kill "$copier"
set -e
[ "$rc" = 0 ] || keep_logs

# Every pod is gone, so no Block volume should still carry the kubelet's
# lock loop device. One leaked once in CI; down detaches it, this says when.
locks=$("$hack/cluster.sh" locks)
if [ -n "$locks" ]; then
  printf 'e2e.sh: warning: kubelet lock loop devices left after the tests: %s\n' "$locks" >&2
  losetup -l >&2
  grep -h "file descriptor lock\|AttachFileDevice\|DetachFileDevice" "$JVOL_CLUSTER/logs/kubelet.log" >&2 || true
fi

trap - EXIT
"$hack/cluster.sh" down
left=$("$hack/cluster.sh" leftovers)
if [ -n "$left" ]; then
  printf 'e2e.sh: make down left these behind:\n%s\n' "$left" >&2
  rc=1
fi
echo "e2e.sh: done after $((SECONDS - start))s" >&2
[ "$rc" = 0 ] || digest
exit "$rc"
