#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, from binaries built by
# hack/tools.sh, images built by hack/images.sh and Debian's containerd and
# runc: no registry, no Docker engine, no systemd units. jvol is installed
# with Helm from charts/jvol, as a user would.
#
# Usage (root):
#   hack/cluster.sh up        cluster up, images imported, jvol installed
#   hack/cluster.sh demo      a PVC of the journal StorageClass and a pod writing to it
#   hack/cluster.sh down      stop everything, leave no process, mount, loop
#                             device, network device or file behind
#   hack/cluster.sh images    rebuild and import the images (after a code change)
#   hack/cluster.sh leftovers print what of a cluster is left (nothing after down)
#
# Everything lives under $JVOL_CLUSTER (default /var/lib/jvol-cluster); the
# kubelet's root is /var/lib/kubelet and jvol keeps volumes in /var/lib/jvol,
# the chart's defaults. One cluster per machine: the ports are fixed.
#
# Three quirks of our machines, handled below: no CAP_SYS_RESOURCE (containerd
# must not ask runc for a lower oom_score_adj than its own), no usable node
# address (an alias on lo), and / is a private mount (the kubelet and jvol
# directories are bind-mounted onto themselves and made shared, which
# Bidirectional mount propagation needs). Cgroups are v1 here; kubelet 1.34
# warns but runs. There is no kube-proxy or cluster DNS: pods that talk to the
# API server use the host network and KUBERNETES_SERVICE_HOST (chart values
# hostNetwork and kubernetesAPI).
set -euo pipefail
hack=$(cd "$(dirname "$0")" && pwd)
export GO=${GO:-$("$hack/ensure-go.sh")/go}
T=${JVOL_CLUSTER:-/var/lib/jvol-cluster}
P=$T/pki L=$T/logs R=$T/run
KUBELET_DIR=/var/lib/kubelet
STATE_DIR=/var/lib/jvol
NODE=${NODE:-$(hostname -s | tr '[:upper:]_' '[:lower:]-')}
NODE_IP=10.254.0.1
cache=${JVOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jvol}
BRIDGE=jvolcni0
SOCK=$R/containerd.sock
export KUBECONFIG=$P/admin.kubeconfig
TAG=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$hack/../charts/jvol/Chart.yaml")

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
bin() { "$hack/tools.sh" "$1"; }
kubectl() { "$(bin kubectl)" "$@"; }
helm() { "$hack/helm.sh" "$@"; }

# start NAME CMD...: runs CMD in the background, in its own session, logging
# to $L/NAME.log, and records its pid.
start() {
  local name=$1
  shift
  setsid "$@" >"$L/$name.log" 2>&1 </dev/null &
  echo $! >"$R/$name.pid"
}

# waitfor WHAT CMD...: polls CMD until it succeeds, for up to two minutes.
waitfor() {
  local what=$1 i
  shift
  for ((i = 0; i < 240; i++)); do
    "$@" >/dev/null 2>&1 && { say "$what ready after $((i / 2))s"; return 0; }
    sleep 0.5
  done
  echo "cluster.sh: $what not ready after 2 minutes; logs in $L" >&2
  return 1
}

pki() {
  [ -f "$P/admin.kubeconfig" ] && return
  say "certificates"
  mkdir -p "$P"
  (
    cd "$P"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 -subj /CN=jvol-cluster-ca 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    sign() { # NAME SUBJECT [SANS]: a certificate signed by the CA; server and client when SANS are given
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      if [ -n "${3:-}" ]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" >"$1.ext"
      else
        printf 'extendedKeyUsage=clientAuth\n' >"$1.ext"
      fi
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver /CN=kube-apiserver "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    sign kubelet-serving "/O=system:nodes/CN=system:node:$NODE" "IP:127.0.0.1,IP:$NODE_IP,DNS:$NODE"
    sign admin "/O=system:masters/CN=kubernetes-admin"
    sign kubelet "/O=system:nodes/CN=system:node:$NODE"
    sign controller-manager /CN=system:kube-controller-manager
    sign scheduler /CN=system:kube-scheduler
    for n in admin kubelet controller-manager scheduler; do
      cat >"$n.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: https://127.0.0.1:6443, certificate-authority-data: $(base64 -w0 ca.crt)}
users:
- name: $n
  user: {client-certificate-data: $(base64 -w0 "$n.crt"), client-key-data: $(base64 -w0 "$n.key")}
contexts:
- name: local
  context: {cluster: local, user: $n}
current-context: local
EOF
    done
  )
}

control_plane() {
  say "etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
  start etcd "$(bin etcd)" --name default --data-dir "$T/etcd" --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  waitfor etcd curl -sf http://127.0.0.1:2381/health
  start kube-apiserver "$(bin kube-apiserver)" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address=127.0.0.1 \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$P/sa.pub" \
    --service-account-signing-key-file="$P/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP
  waitfor kube-apiserver kubectl get --raw /readyz
  local kc=$P/controller-manager.kubeconfig ks=$P/scheduler.kubeconfig
  start kube-controller-manager "$(bin kube-controller-manager)" --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" --bind-address=127.0.0.1 \
    --leader-elect=false --use-service-account-credentials=true --service-account-private-key-file="$P/sa.key" \
    --root-ca-file="$P/ca.crt" --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allocate-node-cidrs=false
  start kube-scheduler "$(bin kube-scheduler)" --kubeconfig="$ks" \
    --authentication-kubeconfig="$ks" --authorization-kubeconfig="$ks" --bind-address=127.0.0.1 --leader-elect=false
  # VolumeSnapshots are the cluster's: their CRDs and controller.
  say "VolumeSnapshot CRDs, snapshot-controller"
  local crd
  for crd in "$(bin snapshot-crds)"/snapshot.storage.k8s.io_*.yaml; do kubectl apply -f "$crd" >/dev/null; done
  waitfor "VolumeSnapshot CRDs" kubectl wait --for=condition=Established crd/volumesnapshots.snapshot.storage.k8s.io \
    crd/volumesnapshotcontents.snapshot.storage.k8s.io crd/volumesnapshotclasses.snapshot.storage.k8s.io --timeout=1s
  start snapshot-controller "$(bin snapshot-controller)" --kubeconfig="$P/admin.kubeconfig" --leader-election=false
}

containerd_up() {
  say "containerd"
  mkdir -p "$T/cni"
  cat >"$T/containerd.toml" <<EOF
version = 2
root = "$T/containerd"
state = "$R/containerd"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  # No CAP_SYS_RESOURCE here: runc may not set an oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$T/cni"
EOF
  cat >"$T/cni/10-jvol.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "jvol-cluster", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]], "dataDir": "$R/cni-ipam"}}]}
EOF
  start containerd containerd --config "$T/containerd.toml"
  waitfor containerd ctr --address "$SOCK" version
}

images() {
  say "images (jvol:$TAG, pause, busybox, sidecars)"
  "$hack/images.sh" "$T/images" "$TAG" "$SOCK"
  local t
  for t in "$T"/images/*.tar; do
    ctr --address "$SOCK" -n k8s.io images import "$t" >/dev/null
  done
}

kubelet_up() {
  say "kubelet"
  # The node address may be neither loopback nor missing; this kernel has no dummy links.
  ip -4 addr show dev lo | grep -q " $NODE_IP/" || ip addr add "$NODE_IP/32" dev lo
  local d
  for d in "$KUBELET_DIR" "$STATE_DIR"; do
    mkdir -p "$d"
    mountpoint -q "$d" || mount --bind "$d" "$d"
    mount --make-rshared "$d"
  done
  cat >"$T/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $P/ca.crt}}
authorization: {mode: Webhook}
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$SOCK
clusterDomain: cluster.local
failSwapOn: false
# Pods are synced (and a grown file system noticed) every 10 s, not every minute.
syncFrequency: 10s
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
  start kubelet "$(bin kubelet)" --config="$T/kubelet.yaml" --kubeconfig="$P/kubelet.kubeconfig" \
    --root-dir="$KUBELET_DIR" --hostname-override="$NODE" --node-ip="$NODE_IP"
  waitfor "node $NODE" kubectl wait --for=condition=Ready "node/$NODE" --timeout=1s
  waitfor "default service account" kubectl get serviceaccount default
}

install() {
  say "helm install jvol charts/jvol"
  helm upgrade --install jvol "$hack/../charts/jvol" --namespace kube-system --wait --timeout 3m \
    --set hostNetwork=true --set kubernetesAPI.host=127.0.0.1 --set kubernetesAPI.port=6443
}

up() {
  local d
  for d in "$KUBELET_DIR" "$STATE_DIR"; do
    if [ -e "$d" ] && [ ! -e "$T" ]; then
      echo "cluster.sh: $d exists but no cluster of ours does: a kubelet or jvol of this machine's own? Not touching it." >&2
      exit 1
    fi
  done
  # Build first: nothing runs yet if a build fails.
  say "tools (built once from the Go module proxy, then cached)"
  local t
  for t in etcd kube-apiserver crictl csi-provisioner csi-resizer csi-snapshotter snapshot-crds; do bin "$t" >/dev/null; done
  "$hack/helm.sh" version >/dev/null
  mkdir -p "$L" "$R"
  pki
  control_plane
  containerd_up
  images
  kubelet_up
  install
}

demo() {
  say "a PVC of the journal StorageClass and a pod writing to it"
  kubectl apply -f - <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: demo}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: journal
  resources: {requests: {storage: 256Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: demo}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: writer
    image: localhost/busybox:e2e
    imagePullPolicy: Never
    command: [sh, -c, 'while true; do date >> /data/log; sync /data/log; sleep 5; done']
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: demo}}
EOF
  kubectl wait --for=condition=Ready pod/demo --timeout=3m
  kubectl get journals -o wide
  kubectl get pvc demo
  kubectl get pod demo -o wide
  echo "export KUBECONFIG=$KUBECONFIG"
}

# stop NAME: SIGTERM, then SIGKILL after 10 s.
stop() {
  local pid i
  [ -f "$R/$1.pid" ] || return 0
  pid=$(cat "$R/$1.pid")
  # A pid file from before a reboot may name someone else's process now.
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$1"; then
    rm -f "$R/$1.pid"
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$R/$1.pid"
}

# ourLoops lists the loop devices over jvol's files: by path, or, once the
# node plugin's mount namespace is gone, by the volume's name alone.
ourLoops() {
  losetup -l -n -O NAME,BACK-FILE | awk -v b="$STATE_DIR/" 'index($2, b)==1 || $2 ~ /^\/pvc-/ {print $1}'
}

# lockLoops lists the loop devices over one of ours: the kubelet takes one
# on every Block volume a pod maps, as a lock, and detaches it on unmap.
lockLoops() {
  local l keys=""
  for l in $(ourLoops); do keys+=" $(stat -c '%Hd:%Ld/%i' "$l")"; done
  [ -n "$keys" ] || return 0
  losetup -l -n -O NAME,BACK-MAJ:MIN,BACK-INO | awk -v k="$keys " 'index(k, " "$2"/"$3" ") {print $1}'
}

down() {
  if [ ! -e "$T" ]; then
    echo "cluster.sh: no cluster in $T" >&2
    return 0
  fi
  say "stopping the cluster"
  local loops
  loops="$(lockLoops) $(ourLoops)"
  stop kubelet
  # Pod sandboxes go through CRI while containerd still runs: containers
  # stop, network namespaces and CNI addresses are released.
  if [ -S "$SOCK" ]; then
    "$(bin crictl)" --runtime-endpoint "unix://$SOCK" rmp -af >/dev/null 2>&1 || true
  fi
  # A dockerd left by an interrupted image build (hack/dockerfile-build.sh).
  local pid
  for pid in $(pgrep -f "dockerd --containerd=$SOCK"); do
    echo "$pid" >"$R/dockerd.pid"
    stop dockerd
  done
  local n
  for n in containerd snapshot-controller kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$n"; done
  # containerd's shims outlive it, and so would containers whose sandbox
  # could not be removed.
  pkill -9 -f "containerd-shim.*-address $SOCK" 2>/dev/null || true
  find /sys/fs/cgroup/*/kubepods* -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -9 2>/dev/null || true
  say "unmounting, detaching loop devices"
  local m pass
  for pass in 1 2 3 4 5; do
    m=$(awk -v a="$KUBELET_DIR" -v b="$STATE_DIR" -v c="$T" -v d=/run/jvol-dockerd -v e="$cache/docker" \
      '{p=$2; gsub(/\\040/, " ", p)} p==a || index(p, a"/")==1 || p==b || index(p, b"/")==1 || p==c || index(p, c"/")==1 || index(p, d"/")==1 || index(p, e"/")==1 {print p}' \
      /proc/self/mounts | sort -r)
    [ -z "$m" ] && break
    while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done <<<"$m"
  done
  for dev in $loops $(lockLoops) $(ourLoops); do
    losetup -d "$dev" 2>/dev/null || true
  done
  say "network, cgroups, files"
  ip link del "$BRIDGE" 2>/dev/null || true
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} + 2>/dev/null || true
  if grep -qE " ($KUBELET_DIR|$STATE_DIR|$T)[/ ]" /proc/self/mounts; then
    echo "cluster.sh: something is still mounted under $KUBELET_DIR, $STATE_DIR or $T; not removing them" >&2
    return 1
  fi
  rm -rf --one-file-system "$T" "$KUBELET_DIR" "$STATE_DIR" /run/jvol-dockerd /var/log/pods /var/log/containers /var/lib/cni
}

# leftovers prints what of a cluster is left on this machine: processes,
# mounts, loop devices, network devices, directories. Nothing after down.
leftovers() {
  pgrep -a -f "$T|$KUBELET_DIR|$(dirname "$(bin kubelet)")/" || true
  grep -E " ($KUBELET_DIR|$STATE_DIR|$T|/run/jvol-dockerd)[/ ]" /proc/self/mountinfo || true
  lockLoops
  ourLoops
  ip -o link show "$BRIDGE" 2>/dev/null || true
  ip -o addr show dev lo | grep " $NODE_IP/" || true
  ls -d "$T" "$KUBELET_DIR" "$STATE_DIR" /var/log/pods /run/jvol-dockerd 2>/dev/null || true
}

case ${1:-} in
up | demo | down | leftovers) "$1" ;;
locks) lockLoops ;;
images) images ;;
*) echo "usage: $0 up|demo|down|images|leftovers|locks" >&2; exit 2 ;;
esac
