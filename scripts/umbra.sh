#!/usr/bin/env bash
# Builds umbra (installing its runtime packages first when run as root) and
# runs it with the arguments given: scripts/umbra.sh backup /etc
# A backup into the default local repository creates it the first time.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$(id -u)" -eq 0 ]; then
	"$root/scripts/deps.sh"
fi
mkdir -p "$root/bin"
if [ ! -x "$root/bin/umbra" ]; then
	echo "building bin/umbra: the first build downloads and compiles its Go modules, a few minutes" >&2
fi
(cd "$root" && go build -o bin/umbra ./cmd/umbra)
# A backup into a repository that does not exist yet creates it first.
default_repo=yes
for arg in "$@"; do
	case "$arg" in --repo | --repo=* | -r) default_repo=no ;; esac
done
if [ "${1:-}" = backup ] && [ "$default_repo" = yes ] && [ -z "${UMBRA_REPO:-}" ] && [ ! -e /var/backups/umbra/config ]; then
	"$root/bin/umbra" init
fi
exec "$root/bin/umbra" "$@"
