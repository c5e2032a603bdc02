#!/usr/bin/env bash
# Installs what umbra and its tests need from Debian's packages (as root).
# Idempotent: packages already present are skipped quickly.
set -euo pipefail
# Database servers for the writers' tests: PostgreSQL (with pgbench),
# MariaDB (with mariadb-backup), Redis; promtool (in Debian's prometheus
# package) lints umbra serve's metrics; headless Chromium drives its web UI.
packages=(btrfs-progs xfsprogs e2fsprogs util-linux procps sqlite3
	postgresql postgresql-contrib mariadb-server mariadb-backup mariadb-client redis-server redis-tools
	prometheus chromium)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "umbra: missing Debian packages: ${missing[*]}; run as root or apt-get install them" >&2
		exit 1
	fi
	echo "installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	# Only promtool is wanted: a Prometheus server the install started
	# has no business running here.
	if [[ " ${missing[*]} " == *" prometheus "* ]]; then
		service prometheus stop >/dev/null 2>&1 || true
	fi
fi
