#!/usr/bin/env bash
# Freeze window p50/p99 over 50 shadow sets (SETS=N for more), under load on
# btrfs: SQLite through umbra shadow create (with the time from start to
# exit), then MariaDB under its transfer load. Needs root (loop devices).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
go test ./internal/cli -run '^$' -bench FreezeWindow -benchtime "${SETS:-50}x" -v
go test ./internal/writer/mariadb -run '^$' -bench FreezeWindow -benchtime "${SETS:-50}x" -v
