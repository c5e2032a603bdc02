#!/usr/bin/env bash
# Time to the first answered query from a backup, in one run: umbra run
# (the cluster started straight from the repository) against umbra restore
# --to-datadir (the whole cluster restored, then started), on a pgbench
# cluster of scale BENCH_SCALE (default 300, about 4.5 GB), backed up once
# to a local repository. The page cache is dropped before each; the query
# reads one account by its key (an index and a heap page of the largest
# table). Alternates BENCH_RUNS times (default 3) and prints the medians,
# then the mount's sequential read against the restore (bench-mount.sh does
# that in depth). Needs root and Debian's PostgreSQL.
#
#   sudo scripts/bench-instant.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${BENCH_DIR:-/var/tmp/umbra-bench-instant}"
scale="${BENCH_SCALE:-300}"
runs="${BENCH_RUNS:-3}"
[ "$(id -u)" -eq 0 ] || {
	echo "bench-instant: needs root" >&2
	exit 1
}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
(cd "$root" && go build -o bin/umbra ./cmd/umbra)
umbra_bin="$root/bin/umbra"
# A configuration of its own: none of this machine's writers.
umbra() { "$umbra_bin" --config "$work/umbra.toml" "$@"; }
export UMBRA_REPO="$work/repo" UMBRA_PASSWORD=bench UMBRA_STATE_DIR="$work/state"
pgdata="$work/pg"
sock="$work/sock"
pgport=55432
runport=55433
copyport=55434
as_pg() { runuser -u postgres -- "$@"; }
stop_all() {
	umbra run --stop --writer postgres:main >/dev/null 2>&1 || true
	[ -f "$work/copy/postmaster.pid" ] && as_pg "$bin/pg_ctl" stop -D "$work/copy" -m immediate >/dev/null 2>&1 || true
}
cleanup() {
	stop_all
	[ -f "$pgdata/postmaster.pid" ] && as_pg "$bin/pg_ctl" stop -D "$pgdata" -m fast >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work" "$sock" "$work/state"
: >"$work/umbra.toml"
chown postgres: "$work" "$sock"
chmod 755 "$work"
as_pg "$bin/initdb" -D "$pgdata" -A trust >/dev/null
as_pg "$bin/pg_ctl" start -D "$pgdata" -l "$work/pg.log" -o "-p $pgport -k $sock -c max_wal_size=4GB" -w >/dev/null
echo "pgbench -i -s $scale ..." >&2
as_pg "$bin/pgbench" -i -q -s "$scale" -h "$sock" -p "$pgport" postgres 2>/dev/null
size=$(du -sb "$pgdata" | cut -f1)
umbra init >/dev/null
spec="postgres:name=main,host=$sock,port=$pgport,user=postgres"
s=$(date +%s.%N)
umbra backup --writer "$spec" >/dev/null
echo "backup of $((size >> 20)) MiB: $(echo "$(date +%s.%N) - $s" | bc) s" >&2

drop() { sync && echo 3 >/proc/sys/vm/drop_caches; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# first_query PORT HOST: seconds from $s until the account query answers.
first_query() {
	until psql -X -h "$2" -p "$1" -U postgres -Atc "SELECT abalance FROM pgbench_accounts WHERE aid = $((scale * 50000))" postgres >/dev/null 2>&1; do
		sleep 0.05
	done
	echo "$(date +%s.%N) - $s" | bc
}
run_t=() restore_t=()
for ((r = 1; r <= runs; r++)); do
	drop
	s=$(date +%s.%N)
	umbra run latest --writer postgres:main --port "$runport" --socket-dir "$work/runsock" >"$work/run.log" 2>&1 &
	run_t+=("$(first_query "$runport" 127.0.0.1)")
	umbra run --stop --writer postgres:main >/dev/null
	wait
	rm -rf "$work/copy"
	drop
	s=$(date +%s.%N)
	umbra restore latest --writer postgres:main --to-datadir "$work/copy" --to-port "$copyport" >/dev/null 2>&1 &
	restore_t+=("$(first_query "$copyport" "$sock")")
	wait
	as_pg "$bin/pg_ctl" stop -D "$work/copy" -m immediate >/dev/null
done
rt=$(printf '%s\n' "${restore_t[@]}" | median)
it=$(printf '%s\n' "${run_t[@]}" | median)
echo "cluster: $((size >> 20)) MiB (pgbench scale $scale), $runs runs, medians"
echo "umbra run, first query:               $it s"
echo "umbra restore --to-datadir, first query: $rt s"
echo "ratio: $(echo "scale=1; $rt / $it" | bc)x sooner"
