#!/usr/bin/env bash
# How long umbra verify takes against a plain restore of the same backup,
# measured in one run on a private PostgreSQL with pgbench's data: a
# backup through the postgres writer, then, page cache dropped before each,
# `umbra restore ID --target DIR` and `umbra verify ID` (restore, recovery,
# pg_amcheck --heapallindexed), alternately, BENCH_RUNS times (default 3).
# Prints the medians and their ratio. Needs root (the server runs as
# postgres; the page cache is dropped).
#
#   sudo scripts/bench-verify.sh                      # pgbench scale 100 (~1.5 GiB)
#   sudo BENCH_PG_SCALE=10 scripts/bench-verify.sh    # a quick look
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${BENCH_DIR:-/var/tmp/umbra-bench-verify}"
scale="${BENCH_PG_SCALE:-100}"
runs="${BENCH_RUNS:-3}"
port="${BENCH_PG_PORT:-55433}"
[ "$(id -u)" -eq 0 ] || {
	echo "bench-verify: needs root" >&2
	exit 1
}
"$root/scripts/deps.sh"
(cd "$root" && go build -o bin/umbra ./cmd/umbra)
umbra="$root/bin/umbra"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

pg_ctl() { runuser -u postgres -- "$pg_bin/pg_ctl" "$@"; }
cleanup() { pg_ctl -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/pg/sock" "$work/scratch"
chmod 755 "$work" "$work/scratch"
chown -R postgres:postgres "$work/pg"
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth=trust --no-sync >/dev/null
pg_ctl -D "$work/pg/data" -l "$work/pg/log" -w \
	-o "-p $port -k $work/pg/sock -c listen_addresses=''" start >/dev/null
echo "pgbench -i -s $scale" >&2
runuser -u postgres -- "$pg_bin/pgbench" -i -s "$scale" -q -h "$work/pg/sock" -p "$port" postgres >/dev/null 2>&1

export UMBRA_REPO="$work/repo" UMBRA_PASSWORD=bench
cfg="$work/umbra.toml"
: >"$cfg"
"$umbra" --config "$cfg" --state-dir "$work/state" init >/dev/null
"$umbra" --config "$cfg" --state-dir "$work/state" backup --writer "postgres:name=bench,host=$work/pg/sock,port=$port" >/dev/null
size=$(du -sm "$work/pg/data" | cut -f1)

# seconds COMMAND...: its wall time, the page cache dropped first.
seconds() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	local start end
	start=$(date +%s.%N)
	"$@" >/dev/null
	end=$(date +%s.%N)
	awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
restores=() verifies=()
for i in $(seq "$runs"); do
	rm -rf "$work/restore"
	restores+=("$(seconds "$umbra" --config "$cfg" --state-dir "$work/state" restore latest --target "$work/restore")")
	rm -rf "$work/restore"
	verifies+=("$(seconds "$umbra" --config "$cfg" --state-dir "$work/state" verify latest --scratch "$work/scratch")")
	echo "run $i: restore ${restores[-1]} s, verify ${verifies[-1]} s" >&2
done
r=$(printf '%s\n' "${restores[@]}" | median)
v=$(printf '%s\n' "${verifies[@]}" | median)
printf 'PostgreSQL %s, pgbench scale %s (%s MiB), median of %s, page cache dropped:\n' \
	"$("$pg_bin/postgres" --version | awk '{print $3}')" "$scale" "$size" "$runs"
printf '| step | seconds |\n|---|---|\n| restore --target | %.1f |\n| verify (restore, recovery, pg_amcheck --heapallindexed) | %.1f |\n| verify / restore | %.2f× |\n' \
	"$r" "$v" "$(awk -v v="$v" -v r="$r" 'BEGIN { print v / r }')"
