#!/usr/bin/env bash
# umbra vs restic vs borg, side by side on the same data in one run: init,
# first backup, unchanged second backup, incremental backup after 1% of the
# data changed in place, and a full restore, with wall time, CPU time, peak
# memory and repository size for every step. Needs root (Debian packages, a
# private PostgreSQL server run as the postgres user, dropping the page
# cache). Everything it makes lives under the work directory.
#
#   sudo scripts/bench.sh                       # full size: ~5.5 GiB of data, run on an idle machine
#   sudo BENCH_SCALE=small scripts/bench.sh     # tiny data sets, about a minute
#
# Knobs (environment):
#   BENCH_DIR       work directory (default /var/tmp/umbra-bench): data sets,
#                   repositories, restores, results
#   BENCH_SCALE     full (default) or small
#   BENCH_TOOLS     tools to run (default "umbra restic borg"; umbra-fast is
#                   umbra with init --compression fast)
#   BENCH_DATASETS  data sets to use (default "mixed dbfile pgdata")
#   BENCH_MIXED_MIB, BENCH_DBFILE_MIB, BENCH_PG_SCALE
#                   sizes (defaults: full 2048, 2048, 100; small 100, 64, 2)
# Each repetition also times "ceiling": the data set's files read by 8
# parallel readers, page cache dropped, for what the disk can give.
#
#   BENCH_RUNS      repetitions (default full 3, small 1): each a fresh
#                   repository per tool, the tools in a rotated order; the
#                   report gives each figure's median
#   BENCH_CHANGE_PERCENT  share of pages (files, for mixed) changed (default 1)
#   BENCH_SEED      seed of the data and of the change (default 1)
#   BENCH_PG_PORT   port of the private PostgreSQL server (default 55432;
#                   unix socket in the work directory only, no TCP)
#   BENCH_VERIFY    1 (default): compare each restore with the source, untimed
#   BENCH_DROP_CACHES  1 (default): drop the page cache before each timed step
#   BENCH_KEEP      1: keep the repositories (default: deleted per data set)
#
# Results: a table on stdout, and under $BENCH_DIR/results/<time>/ (also
# results/latest): results.tsv (one row per tool and step), summary.txt,
# summary.md (the tables for docs/benchmarks.md), meta.txt and each step's
# output in logs/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"

BENCH_DIR="${BENCH_DIR:-/var/tmp/umbra-bench}"
BENCH_SCALE="${BENCH_SCALE:-full}"
BENCH_TOOLS="${BENCH_TOOLS:-umbra restic borg}"
BENCH_DATASETS="${BENCH_DATASETS:-mixed dbfile pgdata}"
BENCH_CHANGE_PERCENT="${BENCH_CHANGE_PERCENT:-1}"
BENCH_SEED="${BENCH_SEED:-1}"
BENCH_PG_PORT="${BENCH_PG_PORT:-55432}"
BENCH_VERIFY="${BENCH_VERIFY:-1}"
BENCH_DROP_CACHES="${BENCH_DROP_CACHES:-1}"
BENCH_KEEP="${BENCH_KEEP:-0}"
case "$BENCH_SCALE" in
full)
	mixed_mib="${BENCH_MIXED_MIB:-2048}" dbfile_mib="${BENCH_DBFILE_MIB:-2048}" pg_scale="${BENCH_PG_SCALE:-100}"
	runs="${BENCH_RUNS:-3}"
	;;
small)
	mixed_mib="${BENCH_MIXED_MIB:-100}" dbfile_mib="${BENCH_DBFILE_MIB:-64}" pg_scale="${BENCH_PG_SCALE:-2}"
	runs="${BENCH_RUNS:-1}"
	;;
*)
	echo "bench: BENCH_SCALE=$BENCH_SCALE: want full or small" >&2
	exit 2
	;;
esac

# Sources of the mixed data set, smallest first: each gets an equal share
# of what is still to copy, so a small root passes its unused share on.
mixed_roots=(/usr/sbin /usr/libexec /usr/include /usr/bin /usr/share /usr/lib)
# Bumped whenever a generator changes, so old data sets are rebuilt.
data_version=2
password=umbra-bench-password

msg() { printf 'bench: %s\n' "$*" >&2; }
die() {
	printf 'bench: %s\n' "$*" >&2
	exit 1
}

# --- checks ------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root (sudo scripts/bench.sh): it installs Debian packages, runs PostgreSQL as the postgres user and drops the page cache"
for t in $BENCH_TOOLS; do
	case "$t" in umbra | umbra-fast | restic | borg) ;; *) die "BENCH_TOOLS: unknown tool $t; want umbra, umbra-fast, restic, borg" ;; esac
done
for d in $BENCH_DATASETS; do
	case "$d" in mixed | dbfile | pgdata) ;; *) die "BENCH_DATASETS: unknown data set $d; want mixed, dbfile, pgdata" ;; esac
done
[ -n "$BENCH_TOOLS" ] || die "BENCH_TOOLS is empty"
[ -n "$BENCH_DATASETS" ] || die "BENCH_DATASETS is empty"
for v in mixed_mib dbfile_mib pg_scale BENCH_SEED BENCH_PG_PORT; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive whole number"
done
[[ "$BENCH_CHANGE_PERCENT" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_CHANGE_PERCENT=$BENCH_CHANGE_PERCENT: want a number"
case "$BENCH_DIR" in
/?*) ;;
*) die "BENCH_DIR=$BENCH_DIR: want an absolute path other than /" ;;
esac
BENCH_DIR="${BENCH_DIR%/}"
# Everything below is deleted and rewritten at will: refuse a directory
# that holds anything but an earlier run's files.
if [ -d "$BENCH_DIR" ] && [ ! -e "$BENCH_DIR/.umbra-bench" ] && [ -n "$(ls -A "$BENCH_DIR")" ]; then
	die "$BENCH_DIR is not empty and was not made by this script; point BENCH_DIR at a new directory"
fi
mkdir -p "$BENCH_DIR"
chmod 755 "$BENCH_DIR"
touch "$BENCH_DIR/.umbra-bench"

data="$BENCH_DIR/data"
repos="$BENCH_DIR/repos"
restores="$BENCH_DIR/restore"
state="$BENCH_DIR/state"
mkdir -p "$data" "$repos" "$restores" "$state" "$BENCH_DIR/bin" "$BENCH_DIR/tmp" "$BENCH_DIR/results"

# --- cleanup -------------------------------------------------------------------

pg_bin=""
pg_running="" # data directory of the private server while it runs

pg_ctl() { runuser -u postgres -- "$pg_bin/pg_ctl" "$@"; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$pg_running" ]; then
		msg "stopping the private PostgreSQL server in $pg_running"
		pg_ctl -D "$pg_running" -m fast -w -t 60 stop >/dev/null 2>&1 ||
			pg_ctl -D "$pg_running" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "${restores:?}"/* "$BENCH_DIR/tmp"/* 2>/dev/null || true
	exit "$rc"
}
trap cleanup EXIT
trap 'msg "interrupted"; exit 130' INT TERM

# --- packages and builds -------------------------------------------------------

packages=(time)
[[ " $BENCH_TOOLS " == *" restic "* ]] && packages+=(restic)
[[ " $BENCH_TOOLS " == *" borg "* ]] && packages+=(borgbackup)
[[ " $BENCH_DATASETS " == *" pgdata "* ]] && packages+=(postgresql)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	msg "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ " $BENCH_DATASETS " == *" pgdata "* ]]; then
	pg_bin="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
	if [ ! -x "$pg_bin/initdb" ] || [ ! -x "$pg_bin/pgbench" ]; then
		die "no PostgreSQL server binaries under /usr/lib/postgresql; apt-get install postgresql"
	fi
	runuser -u postgres -- test -x "$BENCH_DIR" ||
		die "the postgres user cannot enter $BENCH_DIR; use a BENCH_DIR whose parents are world-searchable (like /var/tmp)"
fi

umbra_bin="$root/bin/umbra"
benchdata="$BENCH_DIR/bin/benchdata"
if [[ " $BENCH_TOOLS " == *" umbra"* ]]; then
	msg "building umbra"
	(cd "$root" && go build -o bin/umbra ./cmd/umbra)
fi
(cd "$root" && go build -o "$benchdata" ./scripts/bench/benchdata)

# Room for the data sets, one repository per tool and one restore at a time,
# with repositories counted at full size (they are smaller when compressed).
need_mib=0 max_mib=0
for d in $BENCH_DATASETS; do
	case "$d" in
	mixed) size_mib=$mixed_mib ;;
	dbfile) size_mib=$dbfile_mib ;;
	pgdata) size_mib=$((pg_scale * 26)) ;;
	esac
	need_mib=$((need_mib + size_mib))
	if ((size_mib * 5 > max_mib)); then max_mib=$((size_mib * 5)); fi
done
need_mib=$((need_mib + max_mib))
free_mib=$(($(df -P -k "$BENCH_DIR" | awk 'NR == 2 { print $4 }') / 1024))
if ((free_mib < need_mib)); then
	msg "warning: $BENCH_DIR has $free_mib MiB free, and this run may need up to $need_mib MiB"
fi

run_id="$(date -u +%Y%m%dT%H%M%SZ)"
out="$BENCH_DIR/results/$run_id"
mkdir -p "$out/logs"
ln -sfn "$run_id" "$BENCH_DIR/results/latest"
tsv="$out/results.tsv"
printf 'run\tdataset\ttool\tstep\tstatus\twall_s\tuser_s\tsys_s\tmax_rss_kib\trepo_bytes\tgrowth_bytes\tdata_bytes\tdata_files\tchanged_bytes\tchanged_units\tverify\trep\n' >"$tsv"

{
	echo "run: $run_id, scale $BENCH_SCALE (mixed $mixed_mib MiB, dbfile $dbfile_mib MiB, pgbench scale $pg_scale), change $BENCH_CHANGE_PERCENT%, seed $BENCH_SEED, $runs repetitions (medians), tool order rotated"
	echo "machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r), $(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release)"
	echo "work dir: $BENCH_DIR on $(findmnt -n -o FSTYPE,SOURCE -T "$BENCH_DIR" | tr -s ' ')"
	for t in $BENCH_TOOLS; do
		case "$t" in
		umbra) echo "umbra: $(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown), $(go version | cut -d' ' -f3); defaults: 16 KiB fixed blocks for database files, FastCDC ~1 MiB for the rest; --compression auto (zstd fastest for every blob)" ;;
		umbra-fast) echo "umbra-fast: umbra with init --compression fast (LZ4 for blobs up to 64 KiB, zstd fastest above)" ;;
		restic) echo "restic: $(restic version | cut -d' ' -f2); defaults: --compression auto (repository format 2), 16 MiB packs, reads two files at a time" ;;
		borg) echo "borg: $(borg --version | cut -d' ' -f2); init --encryption=repokey-blake2, defaults: --compression lz4, chunker buzhash 19,23,21,4095" ;;
		esac
	done
	if [ -n "$pg_bin" ]; then echo "postgresql: $("$pg_bin/postgres" --version | awk '{print $3}')"; fi
} >"$out/meta.txt"

# --- helpers --------------------------------------------------------------------

drop_caches_ok=1
drop_caches() {
	sync
	if [ "$BENCH_DROP_CACHES" = 1 ] && [ "$drop_caches_ok" = 1 ]; then
		if ! (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
			drop_caches_ok=0
			msg "cannot drop the page cache here (container?); timings will include cached reads"
			echo "page cache: could not be dropped; timings include cached reads" >>"$out/meta.txt"
		fi
	fi
}

# data_stats DIR: prints "bytes files" of the regular files under DIR.
data_stats() {
	find "$1" -type f -printf '%s\n' | awk '{ b += $1; n++ } END { printf "%d %d\n", b, n }'
}

repo_bytes() {
	if [ -e "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi
}

# --- data sets --------------------------------------------------------------------

dataset_params() {
	case "$1" in
	mixed) echo "mixed v$data_version bytes=$((mixed_mib << 20)) roots=${mixed_roots[*]}" ;;
	dbfile) echo "dbfile v$data_version bytes=$((dbfile_mib << 20)) seed=$BENCH_SEED" ;;
	pgdata) echo "pgdata v$data_version pgbench-scale=$pg_scale orders=$((pg_scale * 50000)) seed=$BENCH_SEED postgres=$("$pg_bin/postgres" --version)" ;;
	esac
}

pg_start() {
	local dir="$1"
	mkdir -p "$BENCH_DIR/pg/sock"
	chown postgres:postgres "$BENCH_DIR/pg" "$BENCH_DIR/pg/sock"
	# Unix socket in the work directory only; fsync off while loading (the
	# clean shutdown and a sync make it durable before anything reads it).
	pg_running="$dir"
	pg_ctl -D "$dir" -l "$BENCH_DIR/pg/server.log" -w -t 300 \
		-o "-p $BENCH_PG_PORT -k $BENCH_DIR/pg/sock -c listen_addresses='' -c fsync=off -c wal_level=minimal -c max_wal_senders=0 -c min_wal_size=32MB -c autovacuum=off" \
		start >/dev/null || die "PostgreSQL did not start; see $BENCH_DIR/pg/server.log"
}

pg_stop() {
	pg_ctl -D "$pg_running" -m fast -w -t 300 stop >/dev/null || die "PostgreSQL did not stop; see $BENCH_DIR/pg/server.log"
	pg_running=""
}

make_mixed() {
	local dest="$1" budget=$((mixed_mib << 20)) list="$data/mixed.list" left n r used
	: >"$list"
	left=$budget
	n=${#mixed_roots[@]}
	for r in "${mixed_roots[@]}"; do
		if [ ! -d "$r" ]; then
			n=$((n - 1))
			continue
		fi
		# Directories, regular files and symlinks in sorted order until this
		# root's share of regular-file bytes is reached; no special files.
		used=$(find "$r" -xdev -path "$BENCH_DIR" -prune -o \( -type d -o -type f -o -type l \) \
			! -name $'*\n*' -printf '%p\t%y\t%s\n' | LC_ALL=C sort -t $'\t' -k1,1 |
			awk -F'\t' -v budget=$((left / n)) -v list="$list" '
				used >= budget { next }
				{ print substr($1, 2) >> list; if ($2 == "f") used += $3 }
				END { printf "%d\n", used }')
		left=$((left - used))
		n=$((n - 1))
	done
	mkdir -p "$dest"
	# tar carries owner, mode, times, xattrs and hard links along.
	tar -C / --no-recursion --verbatim-files-from -T "$list" --xattrs --xattrs-include='*' -cf - |
		tar -C "$dest" --xattrs --xattrs-include='*' -xpf -
}

make_dbfile() {
	mkdir -p "$1"
	"$benchdata" dbfile -size $((dbfile_mib << 20)) -seed "$BENCH_SEED" "$1/bench.db"
}

make_pgdata() {
	local dir="$1"
	mkdir -p "$dir"
	chown postgres:postgres "$dir"
	chmod 700 "$dir"
	runuser -u postgres -- "$pg_bin/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync \
		>"$BENCH_DIR/pg/initdb.log" 2>&1 || die "initdb failed; see $BENCH_DIR/pg/initdb.log"
	pg_start "$dir"
	runuser -u postgres -- "$pg_bin/pgbench" -i -s "$pg_scale" -q -h "$BENCH_DIR/pg/sock" -p "$BENCH_PG_PORT" postgres \
		>"$BENCH_DIR/pg/pgbench.log" 2>&1 || die "pgbench -i failed; see $BENCH_DIR/pg/pgbench.log"
	# pgbench's tables are numbers and blank padding, which any compressor
	# shrinks to almost nothing; an orders table with the entropy of real
	# rows (times, amounts, short texts, e-mail addresses) and three
	# indexes, 50,000 rows per scale unit, makes the set compress as real
	# data does. random() is seeded: the same rows every time.
	runuser -u postgres -- "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$BENCH_DIR/pg/sock" -p "$BENCH_PG_PORT" postgres \
		>"$BENCH_DIR/pg/orders.log" 2>&1 <<SQL || die "making the orders table failed; see $BENCH_DIR/pg/orders.log"
SELECT setseed(0.$BENCH_SEED);
CREATE TABLE orders AS SELECT g AS id,
  timestamptz '2026-01-01' - random() * interval '1000 days' AS placed,
  (random() * 100000)::int AS customer,
  round((random() * 1000)::numeric, 2) AS amount,
  (array['pending','shipped','delivered','cancelled','returned'])[1 + floor(random() * 5)::int] AS status,
  substr(md5(random()::text), 1, 5 + (random() * 20)::int) AS note,
  'customer' || (random() * 100000)::int || '@example.com' AS email,
  (array['Berlin','Paris','London','New York','Tokyo','Madrid','Rome','Oslo'])[1 + floor(random() * 8)::int] AS city
FROM generate_series(1, $pg_scale * 50000) AS g;
ALTER TABLE orders ADD PRIMARY KEY (id);
CREATE INDEX ON orders (customer);
CREATE INDEX ON orders (placed);
SQL
	runuser -u postgres -- "$pg_bin/psql" -X -q -h "$BENCH_DIR/pg/sock" -p "$BENCH_PG_PORT" -c CHECKPOINT postgres >/dev/null
	pg_stop
}

# ensure_dataset NAME: the pristine data set under $data/NAME, made unless
# already there with the same parameters.
ensure_dataset() {
	local ds="$1" dir="$data/$1" params
	params="$(dataset_params "$ds")"
	# A change a run did not undo (interrupted) is undone first.
	if [ -e "$data/$ds.undo" ]; then
		msg "$ds: undoing the change an earlier run left behind"
		if "$benchdata" undo "$data/$ds.undo" >/dev/null; then
			rm -f "$data/$ds.undo"
		else
			msg "$ds: cannot undo; making it again"
			rm -f "$data/$ds.stamp" "$data/$ds.undo"
		fi
	fi
	if [ -d "$dir" ] && [ "$(cat "$data/$ds.stamp" 2>/dev/null)" = "$params" ]; then
		msg "$ds: reusing $dir"
		return
	fi
	msg "$ds: making the data set ($params)"
	rm -f "$data/$ds.stamp"
	for d in "$dir" "$dir.tmp"; do
		# A server an interrupted run left running in it is stopped first.
		if [ "$ds" = pgdata ] && [ -e "$d/postmaster.pid" ]; then
			pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
		fi
	done
	rm -rf "$dir" "$dir.tmp"
	mkdir -p "$BENCH_DIR/pg"
	"make_$ds" "$dir.tmp"
	sync
	mv "$dir.tmp" "$dir"
	echo "$params" >"$data/$ds.stamp"
}

# change_dataset NAME: rewrites BENCH_CHANGE_PERCENT% of the data set in
# place, saving the original bytes for undo_dataset; sets changed_bytes and
# changed_units and describes it in change_desc.
change_dataset() {
	local ds="$1" dir="$data/$1" list="$BENCH_DIR/tmp/$1.change-list" args result
	case "$ds" in
	mixed)
		# The first page (up to 8 KiB) of 1% of the files, random bytes.
		find "$dir" -type f | LC_ALL=C sort >"$list"
		args=(-unit files -content random)
		change_desc="first 8 KiB of $BENCH_CHANGE_PERCENT% of the files rewritten in place (random bytes)"
		;;
	dbfile)
		# 1% of the pages rewritten as new versions of themselves.
		echo "$dir/bench.db" >"$list"
		args=(-unit pages -content dbfile -dbseed "$BENCH_SEED")
		change_desc="$BENCH_CHANGE_PERCENT% of the 8 KiB pages rewritten in place (new rows, same structure)"
		;;
	pgdata)
		# 1% of the 8 KiB pages of the relation files under base/ (main
		# forks, free space maps, visibility maps, segments), random bytes.
		find "$dir/base" -type f -regextype posix-extended -regex '.*/[0-9]+(_[a-z]+)?(\.[0-9]+)?' |
			LC_ALL=C sort >"$list"
		args=(-unit pages -content random)
		change_desc="$BENCH_CHANGE_PERCENT% of the 8 KiB pages of the relation files under base/ rewritten in place (random bytes)"
		;;
	esac
	result="$("$benchdata" change -seed "$BENCH_SEED" -percent "$BENCH_CHANGE_PERCENT" "${args[@]}" \
		-undo "$data/$ds.undo" -list "$list")"
	changed_bytes="$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$result")"
	changed_units="$(sed -n 's/.*pages=\([0-9]*\).*/\1/p' <<<"$result")"
	sync
	msg "$ds: changed $result"
}

undo_dataset() {
	"$benchdata" undo "$data/$1.undo" >/dev/null
	rm -f "$data/$1.undo"
}

# --- the tools ------------------------------------------------------------------

export UMBRA_PASSWORD="$password" RESTIC_PASSWORD="$password" BORG_PASSPHRASE="$password"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_DISPLAY_PASSPHRASE=no
export TMPDIR="$BENCH_DIR/tmp"

# tool_cmd TOOL STEP REPO SOURCE TARGET sets cmd to the step's command line.
tool_cmd() {
	local tool="$1" step="$2" repo="$3" src="$4" target="$5"
	case "$tool:$step" in
	umbra:init) cmd=("$umbra_bin" init --repo "$repo") ;;
	umbra-fast:init) cmd=("$umbra_bin" init --repo "$repo" --compression fast) ;;
	umbra*:restore) cmd=("$umbra_bin" restore latest --repo "$repo" --target "$target") ;;
	umbra*:*) cmd=("$umbra_bin" --json backup --repo "$repo" "$src") ;;
	# The disk's cold-read ceiling: the same files read by 8 parallel
	# readers and thrown away, page cache dropped before.
	ceiling:first) cmd=(bash -c 'find "$1" -type f -print0 | xargs -0 -r -P 8 -n 64 cat >/dev/null' ceiling "$src") ;;
	restic:init) cmd=(restic -r "$repo" init) ;;
	restic:restore) cmd=(restic -r "$repo" restore latest --target "$target") ;;
	restic:*) cmd=(restic -r "$repo" backup "$src") ;;
	borg:init) cmd=(borg init --encryption=repokey-blake2 "$repo") ;;
	borg:restore) cmd=(borg extract "$repo::incremental") ;; # run in $target
	borg:*) cmd=(borg create --stats "$repo::$step" "$src") ;;
	esac
}

# The tools' caches and state: in the work directory, fresh per data set.
export UMBRA_STATE_DIR="$state/umbra" RESTIC_CACHE_DIR="$state/restic" BORG_BASE_DIR="$state/borg"

failed=0
declare -A tool_failed

# run_step DATASET TOOL STEP: runs one timed step and appends its row.
run_step() {
	local ds="$1" tool="$2" step="$3" repo="$repos/$2-$1" src="$data/$1" target="$restores/$2-$1"
	local log="$out/logs/$ds-$tool-$step" cwd="$BENCH_DIR" rc start end status verify="" before growth=""
	if [ -n "${tool_failed[$tool:$ds]:-}" ]; then
		printf '%s\t%s\t%s\t%s\tskipped\t\t\t\t\t\t\t%s\t%s\t%s\t%s\t\t%s\n' "$run_id" "$ds" "$tool" "$step" \
			"$data_bytes" "$data_files" "${changed_bytes:-}" "${changed_units:-}" "$rep" >>"$tsv"
		return
	fi
	tool_cmd "$tool" "$step" "$repo" "$src" "$target"
	if [ "$step" = restore ]; then
		rm -rf "$target"
		mkdir -p "$target"
		cwd="$target"
	fi
	before="$(repo_bytes "$repo")"
	drop_caches
	msg "$ds: $tool $step"
	start=$(date +%s%N)
	set +e
	(cd "$cwd" && exec /usr/bin/time -v -o "$log.time" "${cmd[@]}") </dev/null >"$log.out" 2>"$log.err"
	rc=$?
	# Each step ends when its writes are on disk, whether or not the tool syncs.
	sync
	end=$(date +%s%N)
	set -e
	# Exit status 3 (umbra, restic) and 1 (borg) mean "completed with warnings".
	case "$tool:$rc" in
	*:0) status=ok ;;
	umbra*:3 | restic:3 | borg:1) status=warnings ;;
	*) status="failed($rc)" ;;
	esac
	if [[ "$status" == failed* ]]; then
		msg "$ds: $tool $step failed with status $rc: ${cmd[*]}"
		tail -n 20 "$log.err" | sed 's/^/    /' >&2
		tool_failed[$tool:$ds]=1
		failed=1
	elif [ "$status" = warnings ]; then
		msg "$ds: $tool $step completed with warnings; see $log.err"
	fi
	local repo_after
	repo_after="$(repo_bytes "$repo")"
	[ "$step" = incremental ] && growth=$((repo_after - before))
	if [ "$step" = restore ] && [ "$BENCH_VERIFY" = 1 ] && [[ "$status" != failed* ]]; then
		verify="$(verify_restore "$src" "$target$src" "$log")"
		[ "$verify" = content-differs ] && failed=1
	fi
	[ "$step" = restore ] && rm -rf "$target"
	awk -v OFS='\t' -v run="$run_id" -v ds="$ds" -v tool="$tool" -v step="$step" -v status="$status" \
		-v wall="$(((end - start) / 1000000))" -v repo="$repo_after" -v growth="$growth" \
		-v dbytes="$data_bytes" -v dfiles="$data_files" -v cbytes="${changed_bytes:-}" -v cunits="${changed_units:-}" -v verify="$verify" -v rep="$rep" '
		/User time \(seconds\)/ { user = $NF }
		/System time \(seconds\)/ { sys = $NF }
		/Maximum resident set size/ { rss = $NF }
		END { print run, ds, tool, step, status, sprintf("%.3f", wall / 1000), user, sys, rss, repo, growth, dbytes, dfiles, cbytes, cunits, verify, rep }
	' "$log.time" >>"$tsv"
}

# verify_restore SRC DST LOG: prints ok, metadata-differs or content-differs.
verify_restore() {
	local src="$1" dst="$2" log="$3"
	if ! diff -r --no-dereference -q "$src" "$dst" >"$log.verify" 2>&1; then
		msg "restore differs from the source; see $log.verify"
		echo content-differs
		return
	fi
	# Type, mode, owner, size, mtime (not of directories: restoring their
	# contents changes them) and symlink target of every entry.
	local m='%P\t%y\t%m\t%U\t%G\t%s\t%T@\t%l\n' md='%P\t%y\t%m\t%U\t%G\n'
	if ! diff <(cd "$src" && find . -type d -printf "$md" -o -printf "$m" | LC_ALL=C sort) \
		<(cd "$dst" && find . -type d -printf "$md" -o -printf "$m" | LC_ALL=C sort) >"$log.verify" 2>&1; then
		msg "restore's metadata differs from the source; see $log.verify"
		echo metadata-differs
		return
	fi
	echo ok
}

# --- the run ----------------------------------------------------------------------

msg "run $run_id: tools $BENCH_TOOLS; data sets $BENCH_DATASETS; results in $out"
# rotated N: the tools, starting N places further on.
rotated() {
	local -a t=($BENCH_TOOLS)
	local i n=${#t[@]}
	for ((i = 0; i < n; i++)); do printf '%s ' "${t[$(((i + $1) % n))]}"; done
}

for ds in $BENCH_DATASETS; do
	ensure_dataset "$ds"
	read -r data_bytes data_files < <(data_stats "$data/$ds")
	for ((rep = 1; rep <= runs; rep++)); do
		order="$(rotated $((rep - 1)))"
		changed_bytes="" changed_units=""
		run_step "$ds" ceiling first
		for tool in $order; do
			rm -rf "${repos:?}/$tool-$ds" "${state:?}/$tool"
			mkdir -p "$state/$tool"
			unset "tool_failed[$tool:$ds]"
			run_step "$ds" "$tool" init
			if [ "$tool" = restic ] && [ -z "${tool_failed[$tool:$ds]:-}" ] && ! grep -q '^restic repository format' "$out/meta.txt"; then
				echo "restic repository format: $(restic -r "$repos/$tool-$ds" cat config 2>/dev/null | tr -d ' \n' | sed -n 's/.*"version":\([0-9]*\).*/version \1/p')" >>"$out/meta.txt"
			fi
			run_step "$ds" "$tool" first
			run_step "$ds" "$tool" unchanged
		done
		change_dataset "$ds"
		((rep == 1)) && echo "change $ds: $change_desc; $changed_units units, $changed_bytes bytes" >>"$out/meta.txt"
		for tool in $order; do
			run_step "$ds" "$tool" incremental
			run_step "$ds" "$tool" restore
		done
		undo_dataset "$ds"
		if [ "$BENCH_KEEP" != 1 ] || ((rep < runs)); then
			for tool in $BENCH_TOOLS; do rm -rf "${repos:?}/$tool-$ds"; done
		fi
	done
done

awk -F'\t' -v format=text -f "$root/scripts/bench/report.awk" "$out/meta.txt" "$tsv" | tee "$out/summary.txt"
awk -F'\t' -v format=md -f "$root/scripts/bench/report.awk" "$out/meta.txt" "$tsv" >"$out/summary.md"
msg "results: $tsv, $out/summary.txt, $out/summary.md"
if [ "$failed" = 1 ]; then
	die "some steps failed or a restore differed from its source; see the logs in $out/logs"
fi
