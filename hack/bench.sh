#!/usr/bin/env bash
# fio, side by side and interleaved in one run, on the same file system:
#   raw   a loop device (direct I/O, 4 KiB sectors) on a plain preallocated file
#   jvol  a jvol volume attached with `jvol attach` (its own FUSE server)
#   gofuse the same with `--fuse go-fuse`: the FUSE server jvol used before
#   ext4j ext4 with data=journal and an external journal device (both loop
#         devices on files), fio on a file inside it: the kernel's own
#         data-journaling peer
# and prints each workload's figure and the ratios jvol/raw, jvol/ext4j and
# jvol/gofuse. Then fresh volumes: each job on a jvol volume attached just
# before it (thick, then thin) against a raw loop device on a file made just
# before it (fallocated, then sparse): what a new claim gets.
# The disk here is noisy: only ratios from one run mean anything.
#
# Usage: sudo hack/bench.sh [RUNTIME_SECONDS] (default 15 per job)
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${1:-15}
size=2G
work=$(mktemp -d /var/tmp/jvol-bench.XXXXXX)
pid= pid2= raw= ext4dev= ext4jdev=
cleanup() {
  mountpoint -q "$work/ext4j" && umount "$work/ext4j"
  [ -n "$raw" ] && losetup -d "$raw"
  [ -n "$ext4dev" ] && losetup -d "$ext4dev"
  [ -n "$ext4jdev" ] && losetup -d "$ext4jdev"
  [ -n "$pid" ] && kill -TERM "$pid" && wait "$pid" || true
  [ -n "$pid2" ] && kill -TERM "$pid2" && wait "$pid2" || true
  rm -rf "$work"
}
trap cleanup EXIT

# raw: a loop device on a plain file.
fallocate -l "$size" "$work/raw.img"
raw=$(losetup --find --show --direct-io=on --sector-size 4096 "$work/raw.img")

# jvol: journal at its default (10% of the size); the sequential write job
# writes the whole device, past the journal's size.
attach() { # attach FD DIR ARGS... -> sets dev and apid
  local fd=$1 dir=$2; shift 2
  eval "exec $fd< <(exec bin/jvol attach --dir \"\$dir\" --size ${size%G}Gi \"\$@\" 2>\"\$dir.log\")"
  apid=$! dev=
  while IFS= read -r -u "$fd" line; do # its ready line; end of file if it died
    [[ $line == device=* ]] && { dev=${line#device=}; break; }
  done
  [ -n "$dev" ] || { cat "$dir.log"; exit 1; }
}
attach 3 "$work/vol"; jvol=$dev pid=$apid
attach 4 "$work/vol2" --fuse go-fuse; gofuse=$dev pid2=$apid

# ext4 data=journal with an external 256 MiB journal device.
fallocate -l 3G "$work/ext4.img"
fallocate -l 256M "$work/ext4j.img"
ext4dev=$(losetup --find --show --direct-io=on "$work/ext4.img")
ext4jdev=$(losetup --find --show --direct-io=on "$work/ext4j.img")
mke2fs -q -F -O journal_dev -b 4096 "$ext4jdev"
mkfs.ext4 -q -F -b 4096 -J device="$ext4jdev" "$ext4dev"
mkdir -p "$work/ext4j"
mount -o data=journal "$ext4dev" "$work/ext4j"
fallocate -l "$size" "$work/ext4j/file"

# name:fio options; the figure is MB/s for 1M jobs, IOPS for 4k jobs.
jobs=(
  "seq-write-1M-qd8:--rw=write --bs=1M --iodepth=8"
  "seq-read-1M-qd8:--rw=read --bs=1M --iodepth=8"
  "rand-write-4k-qd32:--rw=randwrite --bs=4k --iodepth=32"
  "rand-read-4k-qd32:--rw=randread --bs=4k --iodepth=32"
  "write-fsync-4k-qd1:--rw=write --bs=4k --iodepth=1 --fsync=1"
)

run() { # run TARGET FILENAME JOBOPTS [TIMING] -> prints the figure
  local target=$1 file=$2 opts=$3 direct=1
  local timing=${4:---time_based --runtime=$runtime --ramp_time=2}
  [ "$target" = ext4j ] && direct=0 # data=journal takes no O_DIRECT
  # shellcheck disable=SC2086
  fio --name="$target" --filename="$file" --size="$size" --ioengine=libaio --direct=$direct \
    $timing --group_reporting $opts \
    --output-format=json --output="$work/fio.json" >/dev/null
  python3 - "$work/fio.json" "$opts" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] > j["read"]["io_bytes"] else j["read"]
print(f'{d["bw_bytes"]/1e6:.0f}' if "--bs=1M" in sys.argv[2] else f'{d["iops"]:.0f}')
PY
}

printf '%-20s %10s %10s %10s %10s %9s %11s %12s\n' workload raw jvol gofuse ext4j jvol/raw jvol/ext4j jvol/gofuse
for job in "${jobs[@]}"; do
  name=${job%%:*} opts=${job#*:}
  r=$(run raw "$raw" "$opts")
  j=$(run jvol "$jvol" "$opts")
  g=$(run gofuse "$gofuse" "$opts")
  e=$(run ext4j "$work/ext4j/file" "$opts")
  unit=IOPS; [[ $opts == *--bs=1M* ]] && unit=MB/s
  printf '%-20s %10s %10s %10s %10s %9.2f %11.2f %12.2f  (%s)\n' "$name" "$r" "$j" "$g" "$e" \
    "$(echo "$j / $r" | bc -l)" "$(echo "$j / $e" | bc -l)" "$(echo "$j / $g" | bc -l)" "$unit"
done
echo
bin/jvol status --dir "$work/vol" | grep -E 'stalls|commits|flushes'

# Fresh: nothing written before the job, no ramp (the first writes are the
# point); the sequential job writes the device once, the random one runs
# for the runtime.
fresh_jobs=(
  "rand-write-4k-qd32:--rw=randwrite --bs=4k --iodepth=32:--time_based --runtime=$runtime"
  "seq-write-1M-qd8:--rw=write --bs=1M --iodepth=8:"
)
fresh() { # fresh thick|thin NAME OPTS TIMING -> prints "raw jvol"
  local kind=$1 name=$2 opts=$3 timing=$4 r j dev
  if [ "$kind" = thick ]; then fallocate -l "$size" "$work/fresh.img"; else truncate -s "$size" "$work/fresh.img"; fi
  dev=$(losetup --find --show --direct-io=on --sector-size 4096 "$work/fresh.img")
  r=$(run raw "$dev" "$opts" "$timing")
  losetup -d "$dev"
  rm "$work/fresh.img"
  attach 5 "$work/fresh" --provisioning "$kind"
  j=$(run jvol "$dev" "$opts" "$timing")
  kill -TERM "$apid" && wait "$apid" || true
  rm -rf "$work/fresh" "$work/fresh.log"
  echo "$r $j"
}
echo
printf '%-26s %10s %10s %9s\n' "fresh volume" raw jvol jvol/raw
for kind in thick thin; do
  for job in "${fresh_jobs[@]}"; do
    IFS=: read -r name opts timing <<<"$job"
    read -r r j < <(fresh "$kind" "$name" "$opts" "$timing")
    unit=IOPS; [[ $opts == *--bs=1M* ]] && unit=MB/s
    printf '%-26s %10s %10s %9.2f  (%s)\n' "$kind $name" "$r" "$j" "$(echo "$j / $r" | bc -l)" "$unit"
  done
done
