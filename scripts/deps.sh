#!/usr/bin/env bash
# Installs the system tools that the demo and the end-to-end tests drive, when missing.
# Debian packages only; needs root. Safe to run again: it installs nothing that is there.
#
# nginx and tinyproxy are the reverse proxy and the HTTP CONNECT proxy the WebSocket
# tests run, each inside a test's own network namespace with its own configuration.
# Their packages would start a system-wide service on install (nginx on port 80 of the
# host); a policy-rc.d that forbids starting services is put in place for the install,
# and anything that started anyway is stopped by its pid file.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

need=()
have ping      || need+=(iputils-ping)
have nft       || need+=(nftables)
have ip        || need+=(iproute2)
have nginx     || need+=(nginx)
have tinyproxy || need+=(tinyproxy)
have sysctl    || need+=(procps)
((${#need[@]})) || exit 0

if [ "$(id -u)" != 0 ]; then
  echo "deps: missing ${need[*]} and not root; install them first" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
made_policy=
cleanup() { if [ -n "$made_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
if [ ! -e "$policy" ]; then
  # 101: "action forbidden by policy"; invoke-rc.d then starts nothing.
  printf '#!/bin/sh\n# stt-tun scripts/deps.sh: no service starts during its install\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made_policy=1
fi

echo "deps: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# Should a service have started regardless (an existing policy-rc.d that allows it),
# stop the one this run installed, by its pid file and only if that pid is the service.
stop_service() { # name pidfile
  local pid
  [ -r "$2" ] || return 0
  pid=$(tr -dc 0-9 <"$2")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 0
  if [ "$(cat "/proc/$pid/comm")" = "$1" ]; then
    echo "deps: stopping the $1 service the package started (pid $pid)"
    kill "$pid" || true
  fi
}
for pkg in "${need[@]}"; do
  case $pkg in
    nginx) stop_service nginx /run/nginx.pid ;;
    tinyproxy) stop_service tinyproxy /run/tinyproxy/tinyproxy.pid ;;
  esac
done
