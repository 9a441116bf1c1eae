#!/usr/bin/env bash
# The demo: builds tandem and runs `tandem lab demo` (an HA firewall pair in
# network namespaces on this machine; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
go build -o bin/tandem ./cmd/tandem
exec ./bin/tandem lab demo "$@"
