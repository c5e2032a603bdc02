#!/usr/bin/env bash
# Builds umbra (installing its runtime packages first when run as root) and
# runs it with the arguments given: scripts/umbra.sh shadow create /data
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$(id -u)" -eq 0 ]; then
	"$root/scripts/deps.sh"
fi
mkdir -p "$root/bin"
(cd "$root" && go build -o bin/umbra ./cmd/umbra)
exec "$root/bin/umbra" "$@"
