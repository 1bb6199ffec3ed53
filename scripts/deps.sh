#!/usr/bin/env bash
# Installs the system tools that the demo and the end-to-end tests drive, when missing.
# Debian packages only; needs root. Safe to run again: it installs nothing that is there.
set -euo pipefail
need=()
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v nft  >/dev/null 2>&1 || need+=(nftables)
command -v ip   >/dev/null 2>&1 || need+=(iproute2)
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need[*]} and not root; install them first" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
