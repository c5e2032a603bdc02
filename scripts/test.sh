#!/usr/bin/env bash
# Runs every test. As root on Debian 12 it installs what the tests need and
# runs them all (loop devices, btrfs, XFS, fsfreeze); without root the tests
# that need those skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
	scripts/deps.sh
else
	echo "not root: tests that need loop devices and mounts will skip" >&2
fi
go vet ./...
# staticcheck, pinned, installed into $GOPATH/bin.
staticcheck_bin="$(go env GOPATH)/bin/staticcheck"
if ! "$staticcheck_bin" -version 2>/dev/null | grep -q "(0.8.2)"; then
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
"$staticcheck_bin" ./...
unformatted=$(gofmt -l cmd internal)
if [ -n "$unformatted" ]; then
	echo "gofmt needed on: $unformatted" >&2
	exit 1
fi
# MinIO, pinned, built into $GOPATH/bin (about two minutes, once) for the S3
# backend's tests, which start private servers with it and skip without it.
minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
minio_bin="$(go env GOPATH)/bin/minio"
if [ "$(go version -m "$minio_bin" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/minio/minio" { print $3 }')" != "$minio_version" ]; then
	echo "installing minio $minio_version" >&2
	go install "github.com/minio/minio@$minio_version"
fi
# Core packages with the race detector; the CLI's end-to-end tests
# (internal/cli) run the binary in separate processes, where the detector
# adds time but no insight. They take 8 to 10 minutes on 2 cores, at go
# test's default limit of 10: theirs is 20 (each umbra run in them has its
# own limit of 5 minutes, past which it fails with its goroutines).
go test -race -count=1 $(go list ./internal/... | grep -v '/internal/cli$')
go test -count=1 -timeout 20m ./internal/cli ./cmd/...
# Every fuzz target for a bounded number of inputs (FUZZTIME, 20000x each;
# a duration such as 1m works too): malformed repository objects,
# configuration and writer specs must never crash umbra. Found inputs land
# in testdata/fuzz and fail the run. A count rather than a duration: when a
# duration ends on a busy machine the fuzzer can report "context deadline
# exceeded" with nothing found.
fuzztime=${FUZZTIME:-20000x}
for pkg in ./internal/repository ./internal/config; do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
		if ! out=$(go test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
			echo "$out" >&2
			exit 1
		fi
		echo "fuzzed $pkg $target for $fuzztime: nothing found"
	done
done

# The README's database story on this machine's own Debian PostgreSQL,
# MariaDB and Redis: only where they hold nothing but what their packages
# made (a fresh machine, as CI's); elsewhere it says so and skips.
scripts/debian-story.sh
