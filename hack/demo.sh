#!/usr/bin/env bash
# jvol's main job on one machine, no cluster: create a journaled volume,
# attach it as a loop device with ext4 on it, write and read files, show live
# figures and journal records, detach, attach again (recovery and fsck) and
# check the files, then clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
jvol=bin/jvol
work=$(mktemp -d /var/tmp/jvol-demo.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

attach() { # attach ARGS...: start jvol attach, wait until it is mounted
  exec 3< <(exec "$jvol" attach --dir "$work/vol" --fs ext4 --mount "$work/mnt" "$@" 2>>"$work/attach.log")
  pid=$!
  while IFS= read -r -u 3 line; do # its ready lines; end of file if it died
    echo "$line"
    [[ $line == mount=* ]] && return
  done
  echo "attach did not come up"; cat "$work/attach.log"; exit 1
}

detach() {
  kill -TERM "$pid"; wait "$pid"; pid=
}

step "create a 1 GiB volume (journal 10%, at least 64 MiB) in $work/vol, attach it, make ext4, mount it"
attach --size 1Gi
df -h "$work/mnt" | tail -1

step "write: 256 MiB with fsync, and a tree of files"
dd if=/dev/urandom of="$work/mnt/big" bs=1M count=256 conv=fsync status=none
cp -r /usr/share/common-licenses "$work/mnt/tree" 2>/dev/null || cp -r /etc "$work/mnt/tree" 2>/dev/null || true
sync -f "$work/mnt"
(cd "$work/mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/sums"
echo "$(wc -l <"$work/sums") files written, checksums kept"

step "one more small file with fsync; the journal's newest records (jvol journal dump)"
echo "hello from jvol" >"$work/mnt/hello" && sync -f "$work/mnt"
echo "./hello" | (cd "$work/mnt" && xargs sha256sum) >>"$work/sums"
"$jvol" journal dump "$work/vol" | tail -5

step "live figures (jvol status)"
sleep 1.2 # the status file is published every second
"$jvol" status --dir "$work/vol"

step "kill -9 the process serving the device in the middle of a write: the write waits, another server resumes"
dd if=/dev/urandom of="$work/mnt/big2" bs=1M count=128 conv=fsync status=none &
dd=$!
server=$("$jvol" status --dir "$work/vol" --json | sed -n 's/.*"serverPid": \([0-9]*\).*/\1/p')
kill -9 "$server" && echo "killed server pid $server"
wait "$dd" && echo "the write completed without an error"
(cd "$work/mnt" && sha256sum big2) >>"$work/sums"
sleep 1.2 # the new server publishes its status within a second
"$jvol" status --dir "$work/vol" | grep -E '^(pid|server):'

step "detach (SIGTERM): flush, commit, unmount, free the loop device"
detach
losetup -a | grep -F "$work" || echo "no loop device left"
grep -F "$work" /proc/self/mountinfo || echo "no mount left"
"$jvol" status --dir "$work/vol"

step "attach again: recover, fsck, mount; read everything back"
attach
(cd "$work/mnt" && sha256sum --quiet -c "$work/sums") && echo "all $(wc -l <"$work/sums") files read back intact"
detach

step "done; cleaning up $work"
