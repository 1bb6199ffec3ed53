#!/usr/bin/env bash
# stt-tun demo: two nodes in two network namespaces, joined by a virtual cable, talk
# through an encrypted stt-tun tunnel. Nothing outside those namespaces and a temporary
# directory is touched, and everything is removed at the end, also on failure or Ctrl-C.
#
# Run it with `make demo` (as root), which builds bin/stt-tun first. Takes a few seconds.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${STT_TUN:-$repo/bin/stt-tun}
size=$((20 * 1024 * 1024)) # bytes sent through the tunnel

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say()  { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
info() { printf '    %s\n' "$*"; }
die()  { printf '\ndemo: %s\n' "$*" >&2; exit 1; }
# run shows a command, then runs it.
run()  { printf '    $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/      /'; return "${PIPESTATUS[0]}"; }

# wait_for DESC SECONDS CMD... polls CMD every 0.1s until it succeeds, or dies.
wait_for() {
  local desc=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "timed out after ${secs}s waiting for $desc"
}

[ "$(id -u)" = 0 ] || die "needs root to create network namespaces (try: sudo make demo)"
[ -x "$bin" ] || die "$bin not found; run 'make build' first"
[ -c /dev/net/tun ] || die "/dev/net/tun is missing; load the tun module (modprobe tun)"
for tool in ip ping; do
  command -v "$tool" >/dev/null || die "$tool not found; run 'make deps'"
done
command -v go >/dev/null || die "go not found (needed to build the small transfer helper)"

# Unique names, so that two demos (or a demo and the tests) never collide.
id="stt-demo-$$"
ns_a="$id-alpha"
ns_b="$id-beta"
tmp=$(mktemp -d "/tmp/$id.XXXXXX")
state_a="$tmp/state-alpha"
state_b="$tmp/state-beta"
recv_pid=""
created_ns=()

# pids_of prints the processes whose command line has "--state-dir DIR": the daemons
# this demo started (DIR is its own temporary directory).
pids_of() {
  local dir=$1 p
  for p in /proc/[0-9]*; do
    tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qxF -- "$dir" || continue
    tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qxF -- "--state-dir" && echo "${p#/proc/}"
  done
  return 0
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  say "Cleaning up"
  if [ -n "$recv_pid" ] && kill -0 "$recv_pid" 2>/dev/null; then
    kill "$recv_pid" 2>/dev/null
    wait "$recv_pid" 2>/dev/null
  fi
  local ns state pid
  for pair in "$ns_a:$state_a" "$ns_b:$state_b"; do
    ns=${pair%%:*}
    state=${pair#*:}
    if [ -n "$(pids_of "$state")" ]; then
      ip netns exec "$ns" "$bin" --state-dir "$state" down stt0 >/dev/null 2>&1
    fi
    for pid in $(pids_of "$state"); do # only if down failed
      info "killing leftover daemon $pid"
      kill -KILL "$pid" 2>/dev/null
    done
  done
  for ns in "${created_ns[@]}"; do
    ip netns delete "$ns" 2>/dev/null && info "deleted namespace $ns"
  done
  rm -rf "$tmp"
  info "removed $tmp"
  if [ "$status" = 0 ]; then
    say "Demo finished: everything it created is gone."
  elif [ "$status" = 130 ] || [ "$status" = 143 ]; then
    printf '\ndemo: interrupted; cleaned up.\n' >&2
  else
    printf '\ndemo: FAILED (exit %s); see the output above.\n' "$status" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Building a tiny TCP transfer helper (instead of iperf3 or netcat)"
(cd "$repo" && go build -o "$tmp/xfer" ./scripts/xfer)
info "built $tmp/xfer"

say "Creating two network namespaces, alpha and beta, joined by a veth cable"
for ns in "$ns_a" "$ns_b"; do
  ip netns add "$ns"
  created_ns+=("$ns")
  ip -n "$ns" link set lo up
done
ip -n "$ns_a" link add veth0 type veth peer name veth0 netns "$ns_b"
ip -n "$ns_a" addr add 10.231.0.1/24 dev veth0
ip -n "$ns_b" addr add 10.231.0.2/24 dev veth0
ip -n "$ns_a" link set veth0 up
ip -n "$ns_b" link set veth0 up
info "alpha: $ns_a, underlay address 10.231.0.1"
info "beta:  $ns_b, underlay address 10.231.0.2"
# The veth carrier comes up asynchronously: wait (at most 10s) until both ends are up.
wait_for "the veth cable to come up" 10 \
  sh -c "ip -n '$ns_a' link show veth0 | grep -q 'state UP' && ip -n '$ns_b' link show veth0 | grep -q 'state UP'"
ip netns exec "$ns_a" ping -n -c 1 -W 2 10.231.0.2 >/dev/null || die "underlay does not work"
info "underlay: alpha can reach beta at 10.231.0.2"

say "Making the network seed (shared by both) and a private key for each node"
(umask 077
 "$bin" genseed >"$tmp/seed"
 "$bin" genkey >"$tmp/alpha.key"
 "$bin" genkey >"$tmp/beta.key")
pub_a=$("$bin" pubkey <"$tmp/alpha.key")
pub_b=$("$bin" pubkey <"$tmp/beta.key")
info "seed:  $tmp/seed (mode 600; copy it to every node out of band)"
info "alpha public key: $pub_a"
info "beta  public key: $pub_b"

say "Writing the two configuration files"
(umask 077
cat >"$tmp/alpha.toml" <<EOF
[interface]
name = "stt0"
node_name = "alpha"
addresses = ["10.99.0.1/24", "fd99::1/64"]
listen_port = 51900
seed_file = "seed"
key_file = "alpha.key"

[[peer]]
name = "beta"
endpoint = "10.231.0.2:51900"          # alpha dials beta
allowed_prefixes = ["10.99.0.2/32", "fd99::2/128"]
public_key = "$pub_b"
EOF
cat >"$tmp/beta.toml" <<EOF
[interface]
name = "stt0"
node_name = "beta"
addresses = ["10.99.0.2/24", "fd99::2/64"]
listen_port = 51900
seed_file = "seed"
key_file = "beta.key"

[[peer]]
name = "alpha"                           # no endpoint: beta waits for alpha
allowed_prefixes = ["10.99.0.1/32", "fd99::1/128"]
public_key = "$pub_a"
EOF
)
sed 's/^/      /' "$tmp/alpha.toml"

say "Bringing the tunnel up on both nodes (stt-tun up starts a daemon and returns when it is up)"
run ip netns exec "$ns_b" "$bin" --state-dir "$state_b" up -c "$tmp/beta.toml"
run ip netns exec "$ns_a" "$bin" --state-dir "$state_a" up -c "$tmp/alpha.toml"
run ip -n "$ns_a" -brief addr show dev stt0

say "Pinging beta's tunnel addresses from alpha (the first ping starts the handshake)"
run ip netns exec "$ns_a" ping -n -c 3 -i 0.2 -W 3 10.99.0.2
run ip netns exec "$ns_a" ping -n -c 3 -i 0.2 -W 3 fd99::2

say "Sending $((size / 1024 / 1024)) MiB of random data over TCP through the tunnel, alpha -> beta"
ip netns exec "$ns_b" "$tmp/xfer" -timeout 60s recv 10.99.0.2:5201 >"$tmp/recv.out" &
recv_pid=$!
sent=$(ip netns exec "$ns_a" "$tmp/xfer" -timeout 60s send 10.99.0.2:5201 "$size")
wait "$recv_pid" || die "receiver failed"
recv_pid=""
received=$(cat "$tmp/recv.out")
info "sent:     $sent"
info "received: $received"
[ "$(echo "$sent" | awk '{print $1, $4}')" = "$(echo "$received" | awk '{print $1, $4}')" ] ||
  die "what beta received differs from what alpha sent"
info "the SHA-256 digests match: the data arrived intact"

say "stt-tun status on alpha"
run ip netns exec "$ns_a" "$bin" --state-dir "$state_a" status
say "stt-tun status on beta"
run ip netns exec "$ns_b" "$bin" --state-dir "$state_b" status

say "Taking the tunnel down on both nodes"
run ip netns exec "$ns_a" "$bin" --state-dir "$state_a" down stt0
run ip netns exec "$ns_b" "$bin" --state-dir "$state_b" down stt0
if ip -n "$ns_a" link show stt0 >/dev/null 2>&1; then die "stt0 still exists in alpha after down"; fi
info "stt0 is gone from both namespaces"
