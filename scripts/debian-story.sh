#!/usr/bin/env bash
# The README's database story ("A database server, backed up and restored")
# on this machine's own Debian packages: PostgreSQL 15, MariaDB and Redis as
# the packages set them up, started with service(8), no systemd. It writes
# the README's files and runs its commands exactly as written (taken from the
# README itself, between "<!-- story:… -->" markers), with a load on each
# server, and checks each step: the data back with every acknowledged write
# before the backup, the servers running from the restored files, nothing
# left that postgresql-common would take for a cluster, WAL archiving alive
# across a password change, a point-in-time restore that holds exactly what
# was committed before its moment.
#
# It takes over the machine's PostgreSQL, MariaDB and Redis, so it runs only
# where they hold nothing but what their packages made (or what an earlier
# run of this script made): on anything else it says so and skips. As root;
# scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
readme="$root/README.md"
marker=/var/lib/umbra-debian-story
work=$(mktemp -d /tmp/debian-story.XXXXXX)
chmod 755 "$work"

say() { printf '\n== %s\n' "$*"; }
fail() {
	printf 'debian-story: FAILED: %s\n' "$*" >&2
	for f in "$work"/*.out; do
		[ -e "$f" ] || continue
		printf -- '--- %s\n' "$f" >&2
		tail -n 40 "$f" >&2
	done
	exit 1
}
skip() {
	echo "debian-story: skipped: $*" >&2
	exit 0
}

if [ "$(id -u)" -ne 0 ]; then
	skip "needs root (it installs and runs Debian's database servers)"
fi
scripts/deps.sh

# --- The README's blocks ----------------------------------------------------

# block NAME: the fenced block after "<!-- story:NAME -->" in the README.
block() {
	awk -v want="<!-- story:$1 -->" '
		$0 == want { found = 1; next }
		found == 1 && /^```/ { found = 2; next }
		found == 2 && /^```/ { exit }
		found == 2 { print }
	' "$readme"
}

# story_file PATH: writes the README's block for PATH there.
story_file() {
	local text
	text=$(block "file $1")
	[ -n "$text" ] || fail "README has no block <!-- story:file $1 -->"
	mkdir -p "$(dirname "$1")"
	printf '%s\n' "$text" >"$1"
	echo "wrote $1 from the README"
}

# story NAME [FROM=TO]...: runs the commands of the README's block NAME
# (lines starting "# "), each must succeed; output goes to $work/NAME.out.
# A FROM=TO pair replaces an example value the README cannot know (a key's
# id, a moment in time) with this run's.
story() {
	local name=$1 cmds line cmd sub
	shift
	cmds=$(block "run $name" | sed -n 's/^# //p')
	[ -n "$cmds" ] || fail "README has no commands in <!-- story:run $name -->"
	while IFS= read -r line; do
		cmd=$line
		for sub in "$@"; do
			[[ $cmd == *"${sub%%=*}"* ]] || continue
			cmd=${cmd//"${sub%%=*}"/"${sub#*=}"}
		done
		echo "# $cmd" | tee -a "$work/$name.out"
		if ! bash -c "$cmd" >>"$work/$name.out" 2>&1; then
			fail "README command failed: $cmd"
		fi
	done <<<"$cmds"
}

# --- A machine as Debian's packages leave it ---------------------------------

psql_as() { runuser -u postgres -- psql -qAtX "$@"; }
pg_dbs() { psql_as -c "SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_database"; }
my_dbs() { mariadb -NBe "SELECT group_concat(schema_name ORDER BY schema_name SEPARATOR ' ') FROM information_schema.schemata"; }
wait_for() { # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds
	local what=$1 limit=$2 i
	shift 2
	for ((i = 0; i < limit * 10; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	fail "$what within ${limit}s"
}
services_up() {
	service postgresql start >/dev/null
	service mariadb start >/dev/null
	service redis-server start >/dev/null 2>&1 # its ulimit line fails in containers
	wait_for "PostgreSQL did not answer" 60 psql_as -c "SELECT 1"
	wait_for "MariaDB did not answer" 60 mariadb -e "SELECT 1"
	wait_for "Redis did not answer" 60 redis-cli ping
}
services_down() {
	service postgresql stop >/dev/null 2>&1 || true
	service mariadb stop >/dev/null 2>&1 || true
	service redis-server stop >/dev/null 2>&1 || true
}

if [ -e "$marker" ]; then
	say "resetting what an earlier run made"
	services_down
	# A server whose configuration went is out of its init script's reach.
	pkill -f -- '-D /var/lib/postgresql/15/main' || true
	for ((i = 0; i < 300; i++)); do pgrep -f -- '-D /var/lib/postgresql/15/main' >/dev/null || break; sleep 0.1; done
	pg_dropcluster --stop 15 main 2>/dev/null || true
	rm -rf /etc/postgresql/15/main /var/lib/postgresql/15/main /var/lib/mysql/* /var/lib/redis/* \
		/var/backups/umbra /var/lib/umbra /etc/umbra /srv/copy /srv/pg-copy /srv/pg-copy.tablespaces \
		/.umbra-before-restore-* /var/lib/*.umbra-before-restore-* /var/lib/.umbra-before-restore-*
else
	# Anything beyond what the packages made is someone's data.
	for path in /var/backups/umbra /etc/umbra/umbra.toml /srv/copy /srv/pg-copy; do
		[ ! -e "$path" ] || skip "$path exists; this script runs only on a scratch machine"
	done
	services_up
	[ "$(pg_dbs)" = "postgres template0 template1" ] || skip "PostgreSQL holds databases ($(pg_dbs)); this script runs only on a scratch machine"
	[ "$(my_dbs)" = "information_schema mysql performance_schema sys" ] || skip "MariaDB holds databases ($(my_dbs)); this script runs only on a scratch machine"
	[ "$(redis-cli dbsize)" = 0 ] || skip "Redis holds keys; this script runs only on a scratch machine"
	services_down
fi
echo "this machine's PostgreSQL, MariaDB and Redis belong to scripts/debian-story.sh" >"$marker"
# As the packages' postinst scripts make them.
if ! pg_lsclusters -h | grep -q '^15 *main '; then
	pg_createcluster 15 main >/dev/null
fi
if [ ! -d /var/lib/mysql/mysql ]; then
	mariadb-install-db --user=mysql --disable-log-bin --skip-test-db >/dev/null
fi
services_up
trap 'jobs -p | xargs -r kill 2>/dev/null; services_down; runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /srv/pg-copy stop -m fast >/dev/null 2>&1 || true' EXIT

say "building umbra"
go build -o bin/umbra ./cmd/umbra

# --- Data and a load on each server ------------------------------------------

psql_as -c "CREATE DATABASE story"
psql_as -d story -c "CREATE TABLE acks (n int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
psql_as -d story -c "CREATE TABLE precious AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g"
mariadb -e "CREATE DATABASE story; CREATE TABLE story.acks (n int PRIMARY KEY) ENGINE=InnoDB"

# Each load commits 1, 2, 3, … (on from what is there) and appends "N EPOCH"
# to the file it is given once the commit returned: what the application
# was told is durable. It ends when its server goes away. Each restore
# starts new files: what was acknowledged after a backup and lost with the
# disaster is not looked for.
load_pg() {
	local start
	start=$(psql_as -d story -c "SELECT coalesce(max(n), 0) FROM acks")
	runuser -u postgres -- bash -c '
		i='"$start"'
		while psql -qAtX -d story -c "INSERT INTO acks (n) VALUES ($((i + 1)))" 2>/dev/null; do
			i=$((i + 1)); echo "$i $(date +%s.%N)"
		done' >>"$1" 2>/dev/null &
}
load_my() {
	local start
	start=$(mariadb -NBe "SELECT coalesce(max(n), 0) FROM story.acks")
	(
		i=$start
		while mariadb -e "INSERT INTO story.acks VALUES ($((i + 1)))" 2>/dev/null; do
			i=$((i + 1))
			echo "$i $(date +%s.%N)"
		done
	) >>"$1" &
}
load_redis() {
	(while n=$(redis-cli incr story 2>/dev/null) && [[ $n =~ ^[0-9]+$ ]]; do echo "$n $(date +%s.%N)"; done) >>"$1" &
}
stop_loads() {
	jobs -p | xargs -r kill 2>/dev/null || true
	wait 2>/dev/null || true
}
# last_ack FILE EPOCH: the highest value acknowledged before EPOCH.
last_ack() { awk -v t="$2" '$2 < t && $1 > m { m = $1 } END { print m + 0 }' "$1"; }
# acks_grow FILE: waits until FILE gains an acknowledgement.
lines() { wc -l <"$1"; }
more_lines() { [ "$(lines "$1")" -gt "$2" ]; }
acks_grow() {
	touch "$1"
	wait_for "no write acknowledged in $1" 30 more_lines "$1" "$(lines "$1")"
}

# --- The story ---------------------------------------------------------------

say "install, configure, init"
story install
story_file /etc/umbra/umbra.toml
story_file /etc/postgresql/15/main/conf.d/umbra.conf
story init
load_pg "$work/pg1.acks"
load_my "$work/my1.acks"
load_redis "$work/redis1.acks"
# A few commits each, so that the backup has something to lose.
for i in 1 2 3 4 5; do
	acks_grow "$work/pg1.acks"
	acks_grow "$work/my1.acks"
	acks_grow "$work/redis1.acks"
done

say "backup under load"
before_backup=$(date +%s.%N)
story backup
grep -q "postgres:main: application" "$work/backup.out" || fail "PostgreSQL's backup is not application-consistent"
grep -q "mariadb:default: application" "$work/backup.out" || fail "MariaDB's backup is not application-consistent"
grep -q "redis:default: application" "$work/backup.out" || fail "Redis's backup is not application-consistent"
pg_want=$(last_ack "$work/pg1.acks" "$before_backup")
my_want=$(last_ack "$work/my1.acks" "$before_backup")
redis_want=$(last_ack "$work/redis1.acks" "$before_backup")
echo "acknowledged before the backup: postgres $pg_want, mariadb $my_want, redis $redis_want"

say "the disaster: servers stopped, data deleted, restore latest --force"
stop_loads
services_down
rm -rf /var/lib/postgresql/15/main /var/lib/mysql/* /var/lib/redis/*
story disaster

# Every acknowledged commit before the backup is back, the rows run 1..max
# without a gap, and each server runs from the restored files.
check_pg() { # check_pg WANT: rows 1..max with max >= WANT
	local got
	got=$(psql_as -d story -c "SELECT count(*) || ' ' || coalesce(max(n), 0) || ' ' || coalesce(min(n), 1) FROM acks") ||
		fail "PostgreSQL does not answer after the restore"
	read -r count max min <<<"$got"
	[ "$min" = 1 ] && [ "$count" = "$max" ] || fail "PostgreSQL's acks are not 1..max: count $count, min $min, max $max"
	[ "$max" -ge "$1" ] || fail "PostgreSQL lost acknowledged commits: has up to $max, $1 was acknowledged before the backup"
	echo "postgres: acks 1..$max (≥ $1)"
}
check_pg "$pg_want"
got=$(mariadb -NBe "SELECT count(*), coalesce(max(n), 0), coalesce(min(n), 1) FROM story.acks") || fail "MariaDB does not answer after the restore"
read -r count max min <<<"$got"
[ "$min" = 1 ] && [ "$count" = "$max" ] && [ "$max" -ge "$my_want" ] ||
	fail "MariaDB: acks count $count min $min max $max, want 1..max with max ≥ $my_want"
echo "mariadb: acks 1..$max (≥ $my_want)"
got=$(redis-cli get story) || fail "Redis does not answer after the restore"
[ "$got" -ge "$redis_want" ] || fail "Redis: story is $got, $redis_want was acknowledged before the backup"
echo "redis: story = $got (≥ $redis_want)"
[ "$(psql_as -c "SHOW data_directory")" = /var/lib/postgresql/15/main ] || fail "PostgreSQL runs from $(psql_as -c "SHOW data_directory")"
[ "$(mariadb -NBe "SELECT @@datadir")" = /var/lib/mysql/ ] || fail "MariaDB runs from $(mariadb -NBe "SELECT @@datadir")"
[ "$(redis-cli config get dir | tail -n 1)" = /var/lib/redis ] || fail "Redis runs from $(redis-cli config get dir)"
[ "$(my_dbs)" = "information_schema mysql performance_schema story sys" ] || fail "MariaDB sees databases: $(my_dbs)"
# Started so that the init scripts know them.
service mariadb status >/dev/null || fail "service mariadb status: not running"
service redis-server status >/dev/null || fail "service redis-server status: not running"

# Nothing that postgresql-common takes for a cluster: one cluster, online.
check_clusters() {
	local list
	list=$(pg_lsclusters -h)
	[ "$(wc -l <<<"$list")" = 1 ] && grep -q '^15 *main *5432 *online' <<<"$list" ||
		fail "pg_lsclusters after $1: $list"
	[ "$(ls /etc/postgresql/15)" = main ] || fail "/etc/postgresql/15 after $1 holds: $(ls /etc/postgresql/15)"
}
check_clusters "restore latest --force"
# What was moved aside is said, with how to remove it; removing it works.
rm_lines=$(grep -o "no longer need it: rm -rf '[^']*'" "$work/disaster.out" | sed 's/^no longer need it: //' || true)
[ -n "$rm_lines" ] || fail "restore did not say how to remove what it moved aside"
while IFS= read -r cmd; do bash -c "$cmd"; done <<<"$rm_lines"
# What the distribution's tools do next runs the restored cluster.
service postgresql restart >/dev/null
wait_for "PostgreSQL did not answer after service postgresql restart" 60 psql_as -c "SELECT 1"
check_clusters "service postgresql restart"
check_pg "$pg_want"

say "beside production: --target, --to-datadir"
load_pg "$work/pg2.acks"
acks_grow "$work/pg2.acks"
story beside
for f in /srv/copy/var/lib/postgresql/15/main/PG_VERSION /srv/copy/var/lib/mysql/story /srv/copy/var/lib/redis/dump.rdb /srv/copy/etc/postgresql/15/main/postgresql.conf; do
	[ -e "$f" ] || fail "--target: $f is missing"
done
got=$(psql_as -p 5433 -d story -c "SELECT count(*) FROM acks") || fail "the copy on port 5433 does not answer"
[ "$got" -ge "$pg_want" ] || fail "the copy on port 5433 has $got acks, want ≥ $pg_want"
echo "copy on 5433: $got acks"
[ "$(psql_as -p 5433 -c "SHOW archive_mode")" = off ] || fail "the copy on port 5433 archives WAL"
check_clusters "--to-datadir"
acks_grow "$work/pg2.acks" # production went on
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /srv/pg-copy stop -m fast >/dev/null

say "a new password, archiving throughout"
archived() { psql_as -c "SELECT archived_count FROM pg_stat_archiver"; }
archived_beyond() { [ "$(archived)" -gt "$1" ]; }
# switch_archived: a WAL segment switched now is archived, within a limit.
switch_archived() {
	local before
	before=$(archived)
	psql_as -d story -c "SELECT pg_switch_wal()" >/dev/null
	wait_for "PostgreSQL did not archive a WAL segment ($1)" 60 archived_beyond "$before"
}
old_key=$(bin/umbra key list | awk '$1 == "*" { print $2 }')
[ -n "$old_key" ] || fail "umbra key list marks no key as the one in use"
failed_before=$(psql_as -c "SELECT failed_count FROM pg_stat_archiver")
story rotate 77031e8c="$old_key"
switch_archived "after the password change"
[ "$(psql_as -c "SELECT failed_count FROM pg_stat_archiver")" = "$failed_before" ] ||
	fail "WAL archiving failed during the password change: $(psql_as -c 'SELECT * FROM pg_stat_archiver')"
[ "$(bin/umbra key list | wc -l)" = 1 ] || fail "the old key is still there: $(bin/umbra key list)"

say "a mistake, undone to just before it"
sleep 1.2
until=$(date '+%Y-%m-%d %H:%M:%S')
until_epoch=$(date -d "$until" +%s)
sleep 1.2
psql_as -d story -c "DROP TABLE precious"
acks_grow "$work/pg2.acks"
switch_archived "after the mistake"
stop_loads
story pitr "2026-11-22 10:29:00=$until"
[ "$(psql_as -d story -c "SELECT count(*) FROM precious")" = 1000 ] || fail "the dropped table did not come back"
# Exactly what was committed before the moment: every acknowledgement
# before it, nothing committed after it.
pg_want=$(last_ack "$work/pg2.acks" "$until_epoch")
check_pg "$pg_want"
after=$(psql_as -d story -c "SELECT count(*) FROM acks WHERE at > '$until'")
[ "$after" = 0 ] || fail "$after commits from after $until survived the point-in-time restore"
check_clusters "restore --until"
load_pg "$work/pg3.acks"
acks_grow "$work/pg3.acks"
switch_archived "after the point-in-time restore"

say "the story holds"
