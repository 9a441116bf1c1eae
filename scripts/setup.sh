#!/usr/bin/env bash
# Installs what tandem's demo and tests need on a Debian machine: the kernel
# tools the lab and the end-to-end tests drive, keepalived and conntrackd for
# the side-by-side benchmarks, and a Go toolchain new enough for go.mod.
# Safe to run again; does nothing that is already done.
set -euo pipefail

need_pkgs=()
for p in iproute2 nftables conntrack iputils-ping keepalived conntrackd procps ca-certificates git; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: missing packages ${need_pkgs[*]}; run as root (sudo) to install them" >&2
		exit 1
	fi
	echo "setup: installing ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
	# keepalived and conntrackd are benchmark baselines only: never leave
	# them running as services on this machine.
	for svc in keepalived conntrackd; do
		systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
	done
fi

# Go: the version go.mod asks for. /usr/local/go is where the official
# tarball and this project's CI machines keep it; otherwise Debian's golang
# fetches the right toolchain itself (GOTOOLCHAIN=auto) from the module proxy.
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
if ! command -v go >/dev/null 2>&1; then
	echo "setup: installing Debian's golang-go (it downloads the toolchain go.mod names)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
fi
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
go version >/dev/null
