#!/bin/bash
# Many hosts, one repository (issue 10): CLIENTS concurrent umbra processes,
# each with its own host name, back up their own trees (1 MiB the same on
# every host, 256 KiB of their own) ROUNDS times into one repository while
# another host runs "forget --keep-last 1 --prune" in a loop. Fails unless
# every backup and prune succeeds, every backup left restores
# byte-identical and check --read-data is clean; prints a table row per run
# for docs/benchmarks.md.
#
#   scripts/fleet.sh                       # 1, 50 and 200 clients on MinIO
#   CLIENTS="20" BACKENDS=local,s3 scripts/fleet.sh
#
# Needs what the tests need (scripts/deps.sh): MinIO is built on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-"1 50 200"}
ROUNDS=${ROUNDS:-3}
BACKENDS=${BACKENDS:-s3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/umbra.test" ./internal/cli
for n in $CLIENTS; do
	echo "== $n clients × $ROUNDS rounds ($BACKENDS)" >&2
	UMBRA_FLEET_CLIENTS=$n UMBRA_FLEET_ROUNDS=$ROUNDS UMBRA_FLEET_BACKENDS=$BACKENDS \
		UMBRA_FLEET_REPORT="$work/report" \
		"$work/umbra.test" -test.run '^TestFleet$' -test.timeout 3h -test.v 2>&1 |
		grep -E 'fleet_test.go|^(--- |ok|FAIL|PASS)' >&2
done
echo "| backend | clients | backups | prunes beside them | backups/min | p50 backup | p99 backup |"
echo "|---|---|---|---|---|---|---|"
python3 - "$work/report" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"| {r['backend']} | {r['clients']} | {r['backups']} | {r['prunes']} | {r['backups_per_minute']:.0f} | {r['p50_seconds']:.2f} s | {r['p99_seconds']:.2f} s |")
PY
