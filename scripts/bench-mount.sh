#!/usr/bin/env bash
# Sequential read through umbra mount against umbra restore of the same
# backup, in one run: a tree of BENCH_MOUNT_MB (default 1500) MiB of random
# data in files of 256 MiB and one database-like file, backed up once; then,
# page cache dropped before each, `umbra restore --target` and `cat` of
# every file through the mount, alternately, BENCH_RUNS times (default 3).
# Prints the medians and the mount's throughput as a share of the
# restore's. Needs root (FUSE mount, dropping the page cache).
#
#   sudo scripts/bench-mount.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${BENCH_DIR:-/var/tmp/umbra-bench-mount}"
mb="${BENCH_MOUNT_MB:-1500}"
runs="${BENCH_RUNS:-3}"
[ "$(id -u)" -eq 0 ] || {
	echo "bench-mount: needs root" >&2
	exit 1
}
(cd "$root" && go build -o bin/umbra ./cmd/umbra)
umbra="$root/bin/umbra"
export UMBRA_REPO="$work/repo" UMBRA_PASSWORD=bench
mp="$work/mnt"
cleanup() { "$umbra" mount --unmount "$mp" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/src" "$mp"
left=$mb
i=0
while [ "$left" -gt 0 ]; do
	n=$((left < 256 ? left : 256))
	head -c "${n}M" /dev/urandom >"$work/src/file$i.bin"
	left=$((left - n))
	i=$((i + 1))
done
"$umbra" init >/dev/null
"$umbra" backup "$work/src" >/dev/null
drop() { sync && echo 3 >/proc/sys/vm/drop_caches; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
restore_t=() mount_t=()
for ((r = 1; r <= runs; r++)); do
	rm -rf "$work/restored"
	drop
	s=$(now)
	"$umbra" restore latest --target "$work/restored" >/dev/null
	restore_t+=("$(echo "$(now) - $s" | bc)")
	"$umbra" mount "$mp" >/dev/null &
	pid=$!
	until [ -L "$mp/latest" ]; do sleep 0.1; done
	drop
	s=$(now)
	cat "$mp/latest/$work/src/"* >/dev/null
	mount_t+=("$(echo "$(now) - $s" | bc)")
	"$umbra" mount --unmount "$mp" >/dev/null
	wait "$pid"
done
rt=$(printf '%s\n' "${restore_t[@]}" | median)
mt=$(printf '%s\n' "${mount_t[@]}" | median)
printf 'data: %d MiB; medians of %d\n' "$mb" "$runs"
printf 'restore --target: %.2f s (%.0f MiB/s)\n' "$rt" "$(echo "$mb / $rt" | bc -l)"
printf 'read through mount: %.2f s (%.0f MiB/s)\n' "$mt" "$(echo "$mb / $mt" | bc -l)"
printf 'mount / restore throughput: %.0f%%\n' "$(echo "100 * $rt / $mt" | bc -l)"
