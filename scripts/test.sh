#!/usr/bin/env bash
# Runs every test of tandem: gofmt, go vet, and `go test -race ./...`.
# Run as root so the real-kernel tests (network namespaces, nftables,
# conntrack, the lab) run too; as another user they skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

unformatted=$(gofmt -l cmd internal)
if [ -n "$unformatted" ]; then
	echo "gofmt: these files need formatting:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
# -p 1: packages run one at a time, so the timing-sensitive end-to-end tests
# never share the two cores with the simulator's thousands of scenarios.
go test -race -p 1 -timeout 25m "$@" ./...
