#!/usr/bin/env bash
# Freeze window p50/p99 over 50 shadow sets of SQLite under load on btrfs, and
# the time from "umbra shadow create" to exit. Needs root (loop devices).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
go test ./cmd/umbra -run '^$' -bench FreezeWindow -benchtime "${SETS:-50}x" -v
