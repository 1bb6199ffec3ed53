#!/usr/bin/env bash
# stt-tun demo: a mesh of four nodes in four network namespaces behind a router
# namespace. One of them, alpha, is the bootstrap member and a relay; beta, gamma and
# delta name only alpha's address and have no [[peer]] at all. They find each other, get
# addresses derived from their keys, and talk directly, not through alpha. Then epsilon,
# on a private LAN behind a NAT router (an nftables masquerade, as a home router does),
# joins with only the seed, its key and alpha's address, learns its NAT is "easy" and
# reaches gamma directly; zeta, behind a NAT that maps every destination to a new port
# (`masquerade random`, "hard"), joins the same way and reaches epsilon through the
# relay, alpha. Nothing outside those namespaces and a temporary directory is touched
# (the NAT routers' nftables rules live in their own namespaces), and everything is
# removed at the end, also on failure or Ctrl-C.
#
# Run it with `make demo` (as root), which builds bin/stt-tun first. Takes about 15 s.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${STT_TUN:-$repo/bin/stt-tun}
size=$((20 * 1024 * 1024)) # bytes sent through the tunnel
nodes=(alpha beta gamma delta)
nat_node=epsilon  # behind an easy NAT router
hard_node=zeta    # behind a hard NAT router

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say()  { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
info() { printf '    %s\n' "$*"; }
die()  { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

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
for tool in ip ping sysctl nft; do
  command -v "$tool" >/dev/null || die "$tool not found; run 'make deps'"
done
command -v go >/dev/null || die "go not found (needed to build the small transfer helper)"

# Unique names, so that two demos (or a demo and the tests) never collide.
id="stt-demo-$$"
ns_router="$id-inet"
tmp=$(mktemp -d "/tmp/$id.XXXXXX")
recv_pid=""
created_ns=()

ns_of()    { echo "$id-$1"; }
state_of() { echo "$tmp/state-$1"; }
underlay() { echo "198.18.$1.2"; } # node i's address on its link to the router
# stt NODE ARGS... runs stt-tun in NODE's namespace with NODE's state directory.
stt() { local n=$1; shift; ip netns exec "$(ns_of "$n")" "$bin" --state-dir "$(state_of "$n")" "$@"; }
# on NODE CMD ARGS... shows "NODE# CMD ARGS" (temporary paths shortened to $DEMO), then
# runs it in NODE's namespace; stt-tun gets NODE's state directory.
on() {
  local n=$1; shift
  printf '    %s# %s\n' "$n" "$(echo "$*" | sed "s|$tmp|\$DEMO|g")"
  if [ "$1" = stt-tun ]; then
    shift
    stt "$n" "$@" 2>&1 | sed 's/^/      /'
  else
    ip netns exec "$(ns_of "$n")" "$@" 2>&1 | sed 's/^/      /'
  fi
  return "${PIPESTATUS[0]}"
}

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
  trap - EXIT
  trap '' INT TERM # a second Ctrl-C must not stop the cleanup half way
  set +e
  say "Cleaning up"
  if [ -n "$recv_pid" ] && kill -0 "$recv_pid" 2>/dev/null; then
    kill "$recv_pid" 2>/dev/null
    wait "$recv_pid" 2>/dev/null
  fi
  local n state pid i
  for n in "${nodes[@]}" "$nat_node" "$hard_node"; do
    state=$(state_of "$n")
    if [ -n "$(pids_of "$state")" ]; then
      stt "$n" down stt0 >/dev/null 2>&1
      # down returns once the daemon let go of its lock; it exits a moment later.
      for ((i = 0; i < 50; i++)); do
        [ -z "$(pids_of "$state")" ] && break
        sleep 0.1
      done
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

say "Creating four namespaces, each on its own network behind a router namespace"
ip netns add "$ns_router"
created_ns+=("$ns_router")
ip -n "$ns_router" link set lo up
ip netns exec "$ns_router" sysctl -qw net.ipv4.ip_forward=1
for i in "${!nodes[@]}"; do
  n=${nodes[$i]}
  k=$((i + 1))
  ns=$(ns_of "$n")
  ip netns add "$ns"
  created_ns+=("$ns")
  ip -n "$ns" link set lo up
  ip -n "$ns_router" link add "v$k" type veth peer name eth0 netns "$ns"
  ip -n "$ns_router" addr add "198.18.$k.1/24" dev "v$k"
  ip -n "$ns" addr add "$(underlay "$k")/24" dev eth0
  ip -n "$ns_router" link set "v$k" up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "198.18.$k.1"
  info "$(printf '%-5s' "$n") underlay address $(underlay "$k")   (namespace $ns)"
done
for i in 2 3 4; do
  wait_for "the underlay from ${nodes[$((i - 1))]} to alpha" 10 \
    ip netns exec "$(ns_of "${nodes[$((i - 1))]}")" ping -n -c 1 -W 1 "$(underlay 1)"
done
info "underlay: every node reaches alpha (and each other) through the router"

say "Making the network seed (shared by all) and a key for each node"
# Each node's files go in a directory of its own, as /etc/stt-tun on a real machine.
(umask 077
 "$bin" genseed >"$tmp/seed"
 for n in "${nodes[@]}"; do
   mkdir "$tmp/$n"
   cp "$tmp/seed" "$tmp/$n/seed"
   "$bin" genkey >"$tmp/$n/$n.key"
 done)
info "seed: copied to every node's directory, mode 600 (out of band, in real life)"
info "a key file holds an Ed25519 seed, which signs the node's member record: $(cut -c1-16 "$tmp/beta/beta.key")..."
for n in "${nodes[@]}"; do
  info "$(printf '%-5s' "$n") public key $("$bin" pubkey <"$tmp/$n/$n.key")"
done

say "Writing the configurations: beta, gamma and delta name only alpha, and no [[peer]]"
for i in "${!nodes[@]}"; do
  n=${nodes[$i]}
  boot="relay = true                       # no bootstrap: alpha waits for the others; it relays"
  [ "$n" = alpha ] || boot="bootstrap = [\"$(underlay 1):51900\"]     # alpha; any member would do"
  (umask 077
   cat >"$tmp/$n/stt0.toml" <<EOF
[interface]
node_name = "$n"          # the default is the host name; the namespaces share one
addresses = ["10.99.0.$((i + 1))/24"]
seed_file = "seed"
key_file = "$n.key"

[discovery]
$boot
accept_prefixes = ["10.99.0.0/24"]    # the IPv4 addresses members may claim
EOF
  )
done
info "alpha's stt0.toml:"
sed 's/^/      /' "$tmp/alpha/stt0.toml"
info "beta's stt0.toml (gamma's and delta's: the same with their own name and address):"
sed 's/^/      /' "$tmp/beta/stt0.toml"

say "Bringing the four nodes up (stt-tun up starts a daemon and returns when it is up)"
info "(\$DEMO is $tmp; every node's stt-tun also gets a --state-dir of its own there)"
start=$(date +%s%N)
for n in "${nodes[@]}"; do
  on "$n" stt-tun up -c "$tmp/$n/stt0.toml"
done

# knows N NODE: NODE's status says it knows N members.
knows() { local st; st=$(stt "$2" status stt0) && grep -q "^  members: $1 known" <<<"$st"; }
for n in "${nodes[@]}"; do
  wait_for "$n to know the 3 other members" 30 knows 3 "$n"
done
ms=$((($(date +%s%N) - start) / 1000000))
info "every node knows the 3 others $((ms / 1000)).$((ms % 1000 / 100)) s after the first one came up"

say "stt-tun status on beta: members learned from alpha (bootstrap) and from gossip"
on beta stt-tun status stt0

# mesh_addr NODE prints NODE's key-derived address, from its own status.
mesh_addr() { local st; st=$(stt "$1" status stt0) && sed -n 's/^  mesh address: \([^ ]*\) in .*/\1/p' <<<"$st"; }
addr_gamma=$(mesh_addr gamma)
addr_delta=$(mesh_addr delta)

say "beta pings gamma and delta at their key-derived addresses (no address plan, no [[peer]])"
on beta ping -n -c 3 -i 0.2 -W 3 "$addr_gamma"
on beta ping -n -c 3 -i 0.2 -W 3 "$addr_delta"
on gamma stt-tun ping -c 3 -i 0.2 delta

say "Sending $((size / 1024 / 1024)) MiB over TCP from beta to gamma, through the tunnel"
ip netns exec "$(ns_of gamma)" "$tmp/xfer" -timeout 60s recv 10.99.0.3:5201 >"$tmp/recv.out" &
recv_pid=$!
sent=$(ip netns exec "$(ns_of beta)" "$tmp/xfer" -timeout 60s send 10.99.0.3:5201 "$size")
wait "$recv_pid" || die "receiver failed"
recv_pid=""
received=$(cat "$tmp/recv.out")
info "sent:     $sent"
info "received: $received"
[ "$(echo "$sent" | awk '{print $1, $4}')" = "$(echo "$received" | awk '{print $1, $4}')" ] ||
  die "what gamma received differs from what beta sent"
info "the SHA-256 digests match: the data arrived intact"

say "Directly, not through alpha: beta's path to gamma goes to gamma's own underlay address"
st=$(stt beta status stt0)
path=$(awk '$1 == "gamma" && $2 == "udp" {print $2, $3}' <<<"$st")
info "beta -> gamma: ${path:-none}"
case "$path" in
  "udp $(underlay 3):"*) info "direct: gamma's address is $(underlay 3), alpha's $(underlay 1)" ;;
  *) die "beta's path to gamma is not direct: '$path'" ;;
esac

say "epsilon joins from behind a NAT router, with only the seed, its key and alpha's address"
# nat_site NODE K RULES: NODE on a private LAN 10.K.0.0/24 behind a router namespace
# with the nftables RULES, whose address on the demo's "internet" is 198.18.K.2.
nat_site() {
  local n=$1 k=$2 rules=$3 gw="$id-$1-gw" ns
  ns=$(ns_of "$n")
  ip netns add "$gw"
  created_ns+=("$gw")
  ip netns add "$ns"
  created_ns+=("$ns")
  ip -n "$gw" link set lo up
  ip -n "$ns" link set lo up
  ip -n "$ns_router" link add "v$k" type veth peer name wan netns "$gw"
  ip -n "$ns_router" addr add "198.18.$k.1/24" dev "v$k"
  ip -n "$gw" addr add "198.18.$k.2/24" dev wan
  ip -n "$gw" link add lan type veth peer name eth0 netns "$ns"
  ip -n "$gw" addr add "10.$k.0.1/24" dev lan
  ip -n "$ns" addr add "10.$k.0.2/24" dev eth0
  ip -n "$ns_router" link set "v$k" up
  ip -n "$gw" link set wan up
  ip -n "$gw" link set lan up
  ip -n "$ns" link set eth0 up
  ip -n "$gw" route add default via "198.18.$k.1"
  ip -n "$ns" route add default via "10.$k.0.1"
  ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$gw" nft -f "$rules"
  wait_for "the underlay from $n to alpha" 10 ip netns exec "$ns" ping -n -c 1 -W 1 "$(underlay 1)"
}
# nat_conf NODE writes NODE's key and configuration: the seed, its key, alpha's address.
nat_conf() {
  local n=$1
  (umask 077
   mkdir "$tmp/$n"
   cp "$tmp/seed" "$tmp/$n/seed"
   "$bin" genkey >"$tmp/$n/$n.key"
   cat >"$tmp/$n/stt0.toml" <<TOML
[interface]
node_name = "$n"
seed_file = "seed"
key_file = "$n.key"

[discovery]
bootstrap = ["$(underlay 1):51900"]   # alpha: the one address $n knows
TOML
  )
}

# epsilon's router: the masquerade of a home router. It maps epsilon's port to the same
# one on its own address 198.18.5.2 for every destination, lets in only replies to what
# epsilon sent, and drops whatever else arrives from outside.
cat >"$tmp/nat.nft" <<'NFT'
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }
}
NFT
nat_site "$nat_node" 5 "$tmp/nat.nft"
info "the router's nftables rules (in its own namespace, which takes them along when it goes):"
sed 's/^/      /' "$tmp/nat.nft"
info "epsilon is 10.5.0.2 on its LAN; the others see it as 198.18.5.2, the router's address"
nat_conf "$nat_node"
info "epsilon's stt0.toml (no address line: it is reached at its key-derived one):"
sed 's/^/      /' "$tmp/$nat_node/stt0.toml"
on "$nat_node" stt-tun up -c "$tmp/$nat_node/stt0.toml"
wait_for "epsilon to know the 4 other members" 30 knows 4 "$nat_node"
# seen_from NODE: a member has told NODE where it sees NODE's packets come from.
seen_from() { local st; st=$(stt "$1" status stt0) && grep -q '^  seen from: 198' <<<"$st"; }
wait_for "a member to tell epsilon where it sees it from" 15 seen_from "$nat_node"
# nat_is NODE TYPE: NODE's status says its NAT is TYPE (two members at different
# addresses have told it where they see it from).
nat_is() { local st; st=$(stt "$1" status stt0) && grep -q "^  nat: $2 " <<<"$st"; }
on "$nat_node" ping -n -c 3 -i 0.2 -W 3 "$addr_gamma"
on "$nat_node" stt-tun ping -c 2 -i 0.2 gamma

say "epsilon's status: seen from its router's address, its NAT, and its path to gamma"
wait_for "epsilon to learn its NAT type" 15 nat_is "$nat_node" easy
on "$nat_node" stt-tun status stt0
info "(the 'refused from' lines: epsilon has no accept_prefixes, so it routes no member's"
info " IPv4 address; it reaches every member at its key-derived address)"
st=$(stt "$nat_node" status stt0)
grep -q '^  seen from: 198.18.5.2:' <<<"$st" || die "epsilon is not seen from its router's address 198.18.5.2"
info "epsilon's $(grep '^  nat: ' <<<"$st" | sed 's/^ *//')"
path=$(awk '$1 == "gamma" {print $2, $3; exit}' <<<"$st") # the PEER line, not the MEMBER one
info "epsilon -> gamma: $path"
case "$path" in
  "udp $(underlay 3):"*) info "direct UDP from behind the NAT to gamma's own address, not through alpha" ;;
  *) die "epsilon's path to gamma is not direct udp: '$path'" ;;
esac
path=$(stt gamma status stt0 | awk '$1 == "epsilon" {print $2, $3; exit}')
info "gamma -> epsilon: $path   (the router's address and the port it mapped, not 10.5.0.2)"
case "$path" in
  "udp 198.18.5.2:"*) ;;
  *) die "gamma's path to epsilon is not the router's address: '$path'" ;;
esac

say "zeta joins from behind a hard NAT: a new port for every destination"
# zeta's router maps each of zeta's flows to a random port of 40000-49999, one per
# destination ("symmetric"), and filters like epsilon's: the port epsilon would have to
# send to is not the one the router opened toward epsilon, so no punch gets through
# between them, and they go through alpha, the relay.
sed 's|oifname "wan" masquerade|oifname "wan" meta l4proto udp masquerade to :40000-49999 random\n    oifname "wan" masquerade|' \
  "$tmp/nat.nft" >"$tmp/hard.nft"
nat_site "$hard_node" 6 "$tmp/hard.nft"
info "its router's postrouting chain:"
sed -n '/chain postrouting/,/}/p' "$tmp/hard.nft" | sed 's/^/      /'
nat_conf "$hard_node"
on "$hard_node" stt-tun up -c "$tmp/$hard_node/stt0.toml"
wait_for "zeta to know the 5 other members" 30 knows 5 "$hard_node"
addr_eps=$(mesh_addr "$nat_node")
# zeta's first pings wait while it punches; 3 s on, it asks alpha for a relay.
info "zeta pings epsilon (every 0.5 s until one is answered)"
start=$(date +%s%N)
ip netns exec "$(ns_of "$hard_node")" ping -n -q -c 1 -i 0.5 -w 20 "$addr_eps" >/dev/null ||
  die "zeta's pings to epsilon got no answer in 20 s"
ms=$((($(date +%s%N) - start) / 1000000))
info "first reply after $((ms / 1000)).$((ms % 1000 / 100)) s: punches first, then the relay"
# path_of NODE PEER prints NODE's path to PEER from its status ("relay via alpha").
path_of() { stt "$1" status stt0 | awk -v p="$2" '$1 == p {print ($2 == "relay" ? $2 " " $3 " " $4 : $2 " " $3); exit}'; }
relayed() { [ "$(path_of "$1" "$2")" = "relay via alpha" ]; }
wait_for "zeta's path to epsilon to go through alpha" 20 relayed "$hard_node" "$nat_node"
wait_for "epsilon's path to zeta to go through alpha" 20 relayed "$nat_node" "$hard_node"
wait_for "zeta to learn its NAT type" 15 nat_is "$hard_node" hard
on "$hard_node" ping -n -c 3 -i 0.2 -W 3 "$addr_eps"
on "$hard_node" stt-tun ping -c 2 -i 0.2 "$nat_node"
st=$(stt "$hard_node" status stt0)
info "zeta's $(grep '^  nat: ' <<<"$st" | sed 's/^ *//')"
info "zeta -> epsilon: $(path_of "$hard_node" "$nat_node")   ($(grep "^  path to $nat_node: " <<<"$st" | sed 's/^ *//'))"
info "epsilon -> zeta: $(path_of "$nat_node" "$hard_node")"
info "alpha: $(stt alpha status stt0 | grep '^  relay: ' | sed 's/^ *//')"
info "the session stays end to end: alpha forwards ciphertext it cannot read"

say "alpha, the bootstrap node, goes down: the others carry on"
on alpha stt-tun down stt0
on delta ping -n -c 3 -i 0.2 -W 3 "$addr_gamma"

say "Taking the tunnel down on the other nodes"
for n in beta gamma delta "$nat_node" "$hard_node"; do
  on "$n" stt-tun down stt0
done
for n in "${nodes[@]}" "$nat_node" "$hard_node"; do
  if ip -n "$(ns_of "$n")" link show stt0 >/dev/null 2>&1; then die "stt0 still exists in $n after down"; fi
done
info "stt0 is gone from every namespace"
