#!/usr/bin/env bash
# bench.sh — stt-tun data-plane benchmark in three network namespaces.
#
# One invocation creates namespaces A and B with unique names joined by a veth pair
# (underlay 10.240.0.0/24), and a third, R, joined to A (10.240.1.0/24) and to B
# (10.240.2.0/24) by veth pairs of its own; R does not forward. Then, -n times,
# interleaved, it measures the underlay, stt-tun over UDP, stt-tun over WebSocket (a
# WebSocket-only pair: udp = false, [websocket] listener, ws_url; "n/a" when this
# stt-tun's configuration does not take those keys), and stt-tun through a relay: three
# mesh members, R with [discovery] relay = true, A and B with R as their only bootstrap,
# and nftables rules in A and B that drop UDP between them, so that A reaches B only
# through R ("n/a" when this stt-tun does not take relay = true). Each stt-tun
# measurement starts fresh daemons (`up --foreground`, so this script owns their PIDs)
# and stops them after.
#
# Per path and run: ping RTT p50/p99 (200 pings, 10 ms apart), iperf3 TCP with 1 and
# with 4 streams; per stt-tun run also the CPU time (utime+stime) of both daemons over
# each TCP run divided by the bytes iperf3 received, each daemon's RSS once up (idle)
# and its VmHWM after the runs (peak); for the relay path also R's CPU time over each
# TCP run divided by the same bytes (what forwarding a GB costs the relay). The table
# shows median [min–max], each stt-tun figure against the underlay of the same run,
# and the relay against direct UDP of the same run. See docs/benchmarks.md.
#
# Needs root. Installs iperf3 with apt-get when missing; builds bin/stt-tun with
# `make build` when missing (or with --build). Every step has a time
# limit. On any exit it stops the processes it started (by PID), deletes its
# namespaces (which removes its links, nftables rules and TUN devices) and its temporary
# files. All traffic stays inside its three namespaces.
#
# Usage: sudo scripts/bench.sh [-n RUNS] [-t SECONDS] [--json FILE] [--perf DIR] [--build]
set -euo pipefail

usage() {
	cat <<'EOF'
usage: sudo scripts/bench.sh [options]

  -n RUNS         runs of each path, interleaved (default 3)
  -t SECONDS      length of each iperf3 run (default 10)
  --pings COUNT   pings per RTT measurement, 10 ms apart (default 200)
  --json FILE     also write the samples and summaries as JSON to FILE
  --perf DIR      record a perf profile of both daemons during the first
                  single-stream UDP run, and their per-thread CPU, into DIR
  --build         run `make build` first even if bin/stt-tun exists
  --logs DIR      keep the daemons' logs and configurations in DIR
  -h, --help      this help

Environment:
  STT_TUN_BIN     stt-tun binary to measure (default: bin/stt-tun, built if missing)
EOF
}

die() {
	echo "bench: $*" >&2
	exit 1
}
log() { echo "bench: $*" >&2; }

# ---- options ----------------------------------------------------------------

RUNS=3
SECONDS_PER_RUN=10
PINGS=200
PING_INTERVAL=0.01
JSON_OUT=""
PERF_DIR=""
BUILD=0
LOG_DIR=""
while (($#)); do
	case "$1" in
	-n) RUNS=${2:?-n needs a number}; shift 2 ;;
	-t) SECONDS_PER_RUN=${2:?-t needs a number}; shift 2 ;;
	--pings) PINGS=${2:?--pings needs a number}; shift 2 ;;
	--json) JSON_OUT=${2:?--json needs a file}; shift 2 ;;
	--perf) PERF_DIR=${2:?--perf needs a directory}; shift 2 ;;
	--build) BUILD=1; shift ;;
	--logs) LOG_DIR=${2:?--logs needs a directory}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
for v in RUNS SECONDS_PER_RUN PINGS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
((RUNS <= 50 && SECONDS_PER_RUN <= 300 && PINGS <= 10000)) ||
	die "-n at most 50, -t at most 300, --pings at most 10000 (the run must stay bounded)"
[ "$(id -u)" = 0 ] || die "needs root (namespaces, TUN devices): sudo $0"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/scripts/bench_report.py"
BIN=${STT_TUN_BIN:-$ROOT/bin/stt-tun}
if [ -n "$JSON_OUT" ]; then
	JSON_OUT=$(realpath -m -- "$JSON_OUT")
fi
if [ -n "$PERF_DIR" ]; then
	PERF_DIR=$(realpath -m -- "$PERF_DIR")
fi
if [ -n "$LOG_DIR" ]; then
	LOG_DIR=$(realpath -m -- "$LOG_DIR")
fi

# ---- tools ------------------------------------------------------------------

apt_install() {
	log "installing $*"
	DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$@" >/dev/null ||
		{ timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$@" >/dev/null; } ||
		die "could not install $*"
}
for tool in ip ping python3 timeout; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/deps.sh; python3 is needed for the figures)"
done
command -v iperf3 >/dev/null 2>&1 || apt_install iperf3
if [ -n "$PERF_DIR" ] && ! command -v perf >/dev/null 2>&1; then
	die "--perf needs perf(1) (Debian: linux-perf)"
fi
if [ ! -x "$BIN" ] || ((BUILD)); then
	[ -z "${STT_TUN_BIN:-}" ] || die "STT_TUN_BIN=$BIN is not executable (or --build with STT_TUN_BIN)"
	log "building $BIN"
	make -C "$ROOT" build >&2 || die "make build failed"
fi
CLK_TCK=$(getconf CLK_TCK)

# ---- what this run creates, and its cleanup ------------------------------------

ID="sttb$$$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
NS_A="$ID-a" # client side: ping and iperf3 client, the dialling daemon
NS_B="$ID-b" # server side: iperf3 server, the listening daemon
NS_R="$ID-r" # the relay member of the relay path; it never forwards IP
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stt-bench.XXXXXX")
NAMESPACES=() # namespaces that exist because of us
DAEMON_A=""   # PIDs of processes we started and have not reaped yet
DAEMON_B=""
DAEMON_R=""
SERVER=""
CHILD=""
PERF=""

# alive PID: true while PID is a running (not zombie) process.
alive() {
	local line rest
	[ -n "$1" ] && read -r line 2>/dev/null <"/proc/$1/stat" || return 1
	rest=${line##*) }
	[ "${rest%% *}" != Z ]
}

# stop PID GRACE_S: SIGTERM, up to GRACE_S seconds to exit, then SIGKILL; reaps it.
stop() {
	local pid=$1 grace=$2 i
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	alive "$pid" && kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? ns
	trap - EXIT INT TERM
	set +e
	stop "$CHILD" 2
	stop "$PERF" 5
	stop "$SERVER" 2
	stop "$DAEMON_A" 10 # the daemons undo their routes on SIGTERM
	stop "$DAEMON_B" 10
	stop "$DAEMON_R" 10
	for ns in "${NAMESPACES[@]}"; do
		ip netns delete "$ns" 2>/dev/null || log "could not delete namespace $ns"
	done
	if [ -n "$LOG_DIR" ]; then
		mkdir -p "$LOG_DIR" &&
			find "$WORK" -maxdepth 2 \( -name '*.log' -o -name '*.toml' -o -name '*.json' \) \
				-exec cp --parents -t "$LOG_DIR" {} + 2>/dev/null
	fi
	rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_child LIMIT_S OUT CMD...: runs CMD in the background with a time limit, output
# to OUT, and waits for it, so that a signal reaches our trap at once.
run_child() {
	local limit=$1 out=$2 rc=0
	shift 2
	timeout --kill-after=5 "$limit" "$@" >"$out" 2>&1 &
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=""
	return "$rc"
}

in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

# ---- samples and metadata ----------------------------------------------------

SAMPLES="$WORK/samples.tsv"
META="$WORK/meta.txt"
: >"$SAMPLES"
: >"$META"
sample() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES"; }
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }
note() {
	meta note "$*"
	log "$*"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- the lab --------------------------------------------------------------------

UNDER_A=10.240.0.1
UNDER_B=10.240.0.2
# The relay lab: A–R on 10.240.1.0/24, B–R on 10.240.2.0/24. R does not forward IP, so
# A and B still reach each other only over their own link, where the relay path's
# nftables rules drop UDP between them.
UNDER_A_R=10.240.1.1
UNDER_R_A=10.240.1.2
UNDER_B_R=10.240.2.1
UNDER_R_B=10.240.2.2
INNER_A=10.241.0.1
INNER_B=10.241.0.2
INNER_R=10.241.0.3
LINK=sttb0
PORT=51900
WS_PORT=51901

ip netns add "$NS_A"
NAMESPACES+=("$NS_A")
ip netns add "$NS_B"
NAMESPACES+=("$NS_B")
ip netns add "$NS_R"
NAMESPACES+=("$NS_R")
ip -n "$NS_A" link set lo up
ip -n "$NS_B" link set lo up
ip -n "$NS_R" link set lo up
# Created inside the namespaces: the host's namespace never sees these links.
ip -n "$NS_A" link add veth0 type veth peer name veth1 netns "$NS_B"
ip -n "$NS_A" addr add "$UNDER_A/24" dev veth0
ip -n "$NS_B" addr add "$UNDER_B/24" dev veth1
ip -n "$NS_A" link set veth0 up
ip -n "$NS_B" link set veth1 up
ip -n "$NS_A" link add veth2 type veth peer name veth3 netns "$NS_R"
ip -n "$NS_A" addr add "$UNDER_A_R/24" dev veth2
ip -n "$NS_R" addr add "$UNDER_R_A/24" dev veth3
ip -n "$NS_B" link add veth4 type veth peer name veth5 netns "$NS_R"
ip -n "$NS_B" addr add "$UNDER_B_R/24" dev veth4
ip -n "$NS_R" addr add "$UNDER_R_B/24" dev veth5
ip -n "$NS_A" link set veth2 up
ip -n "$NS_R" link set veth3 up
ip -n "$NS_B" link set veth4 up
ip -n "$NS_R" link set veth5 up

# wait_ping DST TRIES: until DST answers a ping from namespace A.
wait_ping() {
	local i
	for ((i = 0; i < $2; i++)); do
		in_a ping -n -q -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	return 1
}
wait_ping "$UNDER_B" 50 || die "underlay $UNDER_A -> $UNDER_B does not answer"
wait_ping "$UNDER_R_A" 50 || die "underlay $UNDER_A_R -> $UNDER_R_A does not answer"

# Keys and seed, once per invocation; peers pin each other's public key.
(
	umask 077
	"$BIN" genseed >"$WORK/seed"
	"$BIN" genkey >"$WORK/a.key"
	"$BIN" genkey >"$WORK/b.key"
	"$BIN" genkey >"$WORK/r.key"
)
PUB_A=$("$BIN" pubkey <"$WORK/a.key")
PUB_B=$("$BIN" pubkey <"$WORK/b.key")

# write_configs DIR SEED MODE: DIR/a.toml and DIR/b.toml for MODE "udp" or "ws".
# A dials B. Over UDP, A knows B's endpoint. Over WebSocket, neither node opens a
# UDP socket (udp = false), B listens for WebSocket and A knows only B's ws_url: the
# WebSocket-only setup of docs/configuration.md, so nothing else can carry the data.
write_configs() {
	local dir=$1 seed=$2 mode=$3
	mkdir -p "$dir"
	{
		printf '[interface]\nname = "%s"\nnode_name = "bench-a"\naddresses = ["%s/24"]\n' "$LINK" "$INNER_A"
		if [ "$mode" = ws ]; then
			printf 'udp = false\n'
		else
			printf 'listen_port = %d\n' "$PORT"
		fi
		printf 'seed_file = "%s"\nkey_file = "%s"\n\n' "$seed" "$WORK/a.key"
		printf '[[peer]]\nname = "bench-b"\n'
		if [ "$mode" = ws ]; then
			printf 'ws_url = "ws://%s:%d/stt"\n' "$UNDER_B" "$WS_PORT"
		else
			printf 'endpoint = "%s:%d"\n' "$UNDER_B" "$PORT"
		fi
		printf 'allowed_prefixes = ["%s/32"]\npublic_key = "%s"\n' "$INNER_B" "$PUB_B"
	} >"$dir/a.toml"
	{
		printf '[interface]\nname = "%s"\nnode_name = "bench-b"\naddresses = ["%s/24"]\n' "$LINK" "$INNER_B"
		if [ "$mode" = ws ]; then
			printf 'udp = false\n'
		else
			printf 'listen_port = %d\n' "$PORT"
		fi
		printf 'seed_file = "%s"\nkey_file = "%s"\n\n' "$seed" "$WORK/b.key"
		if [ "$mode" = ws ]; then
			printf '[websocket]\nlisten = "%s:%d"\npath = "/stt"\n\n' "$UNDER_B" "$WS_PORT"
		fi
		printf '[[peer]]\nname = "bench-a"\n'
		printf 'allowed_prefixes = ["%s/32"]\npublic_key = "%s"\n' "$INNER_A" "$PUB_A"
	} >"$dir/b.toml"
}
write_configs "$WORK/udp" "$WORK/seed" udp

# write_relay_configs DIR SEED: DIR/a.toml, DIR/b.toml and DIR/r.toml for the relay
# path: three mesh members and no [[peer]]. R relays ([discovery] relay = true) and has
# no bootstrap; A and B name only R as bootstrap, each at R's address on its own link,
# and learn each other (addresses and candidate endpoints) from R's gossip.
write_relay_configs() {
	local dir=$1 seed=$2 side inner boot
	mkdir -p "$dir"
	for side in a b r; do
		case $side in
		a) inner=$INNER_A boot="$UNDER_R_A:$PORT" ;;
		b) inner=$INNER_B boot="$UNDER_R_B:$PORT" ;;
		*) inner=$INNER_R boot="" ;;
		esac
		{
			printf '[interface]\nname = "%s"\nnode_name = "bench-%s"\naddresses = ["%s/24"]\nlisten_port = %d\n' \
				"$LINK" "$side" "$inner" "$PORT"
			printf 'seed_file = "%s"\nkey_file = "%s"\n\n' "$seed" "$WORK/$side.key"
			printf '[discovery]\naccept_prefixes = ["10.241.0.0/24"]\n'
			if [ -n "$boot" ]; then
				printf 'bootstrap = ["%s"]\n' "$boot"
			else
				printf 'relay = true\n'
			fi
		} >"$dir/$side.toml"
	done
}

# accepts DIR SIDE...: whether this binary accepts DIR/SIDE.toml for each SIDE, files
# written with the seed file $WORK/no-such-seed. `up` parses the whole file before
# anything else and reports every problem as FILE:LINE; with a seed file that does not
# exist, a file it accepts fails on the seed instead, before any device or socket is
# made. Runs in namespace A all the same. On refusal, REASON says why.
REASON=""
accepts() {
	local dir=$1 side out
	shift
	for side in "$@"; do
		out=$(in_a timeout 10 "$BIN" --state-dir "$dir/state" up --foreground -c "$dir/$side.toml" 2>&1) || true
		if [[ $out == *"$dir/$side.toml:"* ]] || [[ $out != *"$WORK/no-such-seed"* ]]; then
			REASON=$({ grep -m1 '^stt-tun:' <<<"$out" || grep -m1 . <<<"$out"; } | sed "s|$dir/||")
			return 1
		fi
	done
}
MODES=(udp)
write_configs "$WORK/ws-check" "$WORK/no-such-seed" ws
if accepts "$WORK/ws-check" a b; then
	write_configs "$WORK/ws" "$WORK/seed" ws
	MODES+=(ws)
else
	note "stt-tun over WebSocket: n/a, this stt-tun does not take the WebSocket config ($REASON)"
fi
write_relay_configs "$WORK/relay-check" "$WORK/no-such-seed"
if ! command -v nft >/dev/null 2>&1; then
	note "stt-tun through a relay: n/a, nft(8) not found to block UDP between A and B (scripts/deps.sh installs nftables)"
elif accepts "$WORK/relay-check" r a b; then
	write_relay_configs "$WORK/relay" "$WORK/seed"
	MODES+=(relay)
else
	note "stt-tun through a relay: n/a, this stt-tun does not take the relay config ($REASON)"
fi

# ---- daemons ----------------------------------------------------------------------

# status NS SIDE: the daemon's status JSON on stdout.
status_json() {
	ip netns exec "$1" timeout 5 "$BIN" --state-dir "$WORK/state-$2" status --json --timeout 2s "$LINK" 2>/dev/null
}

# wait_ready NS SIDE PID: until the daemon's status shows a running tunnel (it has its
# public key once the tunnel is up; while starting, status only has the names).
wait_ready() {
	local ns=$1 side=$2 pid=$3 i
	for ((i = 0; i < 300; i++)); do
		alive "$pid" || return 1
		if status_json "$ns" "$side" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("public_key") else 1)' 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# peer_path [NAME]: the transport the dialling daemon uses now to its peer NAME (default:
# its first peer): "udp", "ws", or "relay" followed by the member it relays through.
peer_path() {
	status_json "$NS_A" a | python3 -c '
import json, sys
want = sys.argv[1] if len(sys.argv) > 1 else ""
ps = [p for p in json.load(sys.stdin).get("peers") or [] if not want or p.get("name") == want]
p = ps[0] if ps else {}
print(" ".join(x for x in (p.get("path", ""), p.get("relay_via", "")) if x))' "$@" 2>/dev/null || true
}

# knows NS SIDE NAME: the daemon lists member NAME with its mesh address.
knows() {
	status_json "$1" "$2" | python3 -c '
import json, sys
sys.exit(0 if any(p.get("name") == sys.argv[1] and p.get("mesh_address") for p in json.load(sys.stdin).get("peers") or []) else 1)' "$3" 2>/dev/null
}

# relay_forwarded: R's counter of the bytes it forwarded (relay_forwarded_bytes).
relay_forwarded() {
	status_json "$NS_R" r | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["relay_forwarded_bytes"])' 2>/dev/null
}

# block_direct: nftables rules in A and in B that drop UDP between them (to and from
# each of the other's underlay addresses), so that the relay path's A reaches B only
# through R. unblock_direct removes them and logs how many packets they dropped: the
# ends' attempts at a direct path.
block_direct() {
	local ns other
	for ns in "$NS_A" "$NS_B"; do
		other="$UNDER_B, $UNDER_B_R"
		[ "$ns" = "$NS_B" ] && other="$UNDER_A, $UNDER_A_R"
		ip netns exec "$ns" nft -f - <<EOF || return 1
table inet sttbench_relay {
	chain out {
		type filter hook output priority filter; policy accept;
		meta l4proto udp ip daddr { $other } counter drop
	}
	chain in {
		type filter hook input priority filter; policy accept;
		meta l4proto udp ip saddr { $other } counter drop
	}
}
EOF
	done
}
unblock_direct() {
	local ns rules dropped
	for ns in "$NS_A" "$NS_B"; do
		rules=$(ip netns exec "$ns" nft list table inet sttbench_relay 2>/dev/null) || continue
		dropped=$(awk '/counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") n += $(i + 1) } END { print n + 0 }' <<<"$rules")
		ip netns exec "$ns" nft delete table inet sttbench_relay 2>/dev/null || true
		log "relay path: the rules in ${ns##*-} dropped $dropped direct UDP packet(s)"
	done
}

# start_daemons MODE: starts the daemons (with the relay R first, behind the rules that
# block UDP between A and B), waits until the tunnel carries a ping and, over WebSocket
# or the relay, until A's status shows that path; records idle RSS. Returns 1 (daemons
# stopped, logs kept) when it does not come up.
start_daemons() {
	local mode=$1 rep=$2 i
	rm -rf "$WORK/state-a" "$WORK/state-b" "$WORK/state-r"
	printf '=== run %s, %s\n' "$rep" "$mode" | tee -a "$WORK/daemon-a.log" "$WORK/daemon-r.log" >>"$WORK/daemon-b.log"
	if [ "$mode" = relay ]; then
		if ! block_direct; then
			note "run $rep, relay: could not load the nftables rules that block UDP between A and B"
			unblock_direct
			return 1
		fi
		ip netns exec "$NS_R" "$BIN" --state-dir "$WORK/state-r" up --foreground -c "$WORK/$mode/r.toml" >>"$WORK/daemon-r.log" 2>&1 &
		DAEMON_R=$!
		if ! wait_ready "$NS_R" r "$DAEMON_R"; then
			note "run $rep, relay: the relay's daemon did not come up; log tail: $(tail -n 3 "$WORK/daemon-r.log" | tr '\n' ' ')"
			stop_daemons
			return 1
		fi
	fi
	# Not through in_b: `ip netns exec` execs, so $! is the daemon itself.
	ip netns exec "$NS_B" "$BIN" --state-dir "$WORK/state-b" up --foreground -c "$WORK/$mode/b.toml" >>"$WORK/daemon-b.log" 2>&1 &
	DAEMON_B=$!
	ip netns exec "$NS_A" "$BIN" --state-dir "$WORK/state-a" up --foreground -c "$WORK/$mode/a.toml" >>"$WORK/daemon-a.log" 2>&1 &
	DAEMON_A=$!
	if ! wait_ready "$NS_B" b "$DAEMON_B" || ! wait_ready "$NS_A" a "$DAEMON_A"; then
		note "run $rep, $mode: daemons did not come up; log tail: $(tail -n 3 "$WORK/daemon-a.log" "$WORK/daemon-b.log" | tr '\n' ' ')"
		stop_daemons
		return 1
	fi
	# Idle: up, before any traffic through the tunnel; kept if the tunnel works.
	local idle_a idle_b idle_r=""
	idle_a=$(mib "$DAEMON_A" VmRSS) || idle_a=""
	idle_b=$(mib "$DAEMON_B" VmRSS) || idle_b=""
	if [ -n "$DAEMON_R" ]; then idle_r=$(mib "$DAEMON_R" VmRSS) || idle_r=""; fi
	if [ "$mode" = relay ]; then
		# The first packet waits until each end knows the other's member record: a
		# relay's grant or a punch for a member an end does not know yet is ignored.
		for ((i = 0; i < 150; i++)); do
			knows "$NS_A" a bench-b && knows "$NS_B" b bench-a && break
			sleep 0.2
		done
		if ! knows "$NS_A" a bench-b || ! knows "$NS_B" b bench-a; then
			note "run $rep, relay: A and B did not learn each other's member record from R within 30 s"
			stop_daemons
			return 1
		fi
	fi
	if ! wait_ping "$INNER_B" 30; then
		note "run $rep, $mode: the daemons are up but no ping got through the tunnel within 30 tries (--logs DIR keeps their logs)"
		stop_daemons
		return 1
	fi
	if [ "$mode" = ws ]; then
		for ((i = 0; i < 100; i++)); do
			[ "$(peer_path)" = ws ] && break
			sleep 0.2
		done
		if [ "$(peer_path)" != ws ]; then
			note "run $rep, ws: the peer's path is '$(peer_path)', not ws"
			stop_daemons
			return 1
		fi
	fi
	if [ "$mode" = relay ]; then
		for ((i = 0; i < 100; i++)); do
			[ "$(peer_path bench-b)" = "relay bench-r" ] && break
			sleep 0.2
		done
		if [ "$(peer_path bench-b)" != "relay bench-r" ]; then
			note "run $rep, relay: A's path to bench-b is '$(peer_path bench-b)', not 'relay bench-r'"
			stop_daemons
			return 1
		fi
	fi
	if [ -n "$idle_a" ]; then sample "$rep" "$mode" idle_rss_a_mib "$idle_a"; fi
	if [ -n "$idle_b" ]; then sample "$rep" "$mode" idle_rss_b_mib "$idle_b"; fi
	if [ -n "$idle_r" ]; then sample "$rep" "$mode" idle_rss_r_mib "$idle_r"; fi
}

stop_daemons() {
	stop "$DAEMON_A" 10
	DAEMON_A=""
	stop "$DAEMON_B" 10
	DAEMON_B=""
	if [ -n "$DAEMON_R" ]; then
		stop "$DAEMON_R" 10
		DAEMON_R=""
		unblock_direct
	fi
}

# mib PID FIELD: FIELD of /proc/PID/status in MiB.
mib() {
	local kib
	kib=$(python3 "$HELPER" mem "$1" "$2" 2>/dev/null) || return 1
	awk -v k="$kib" 'BEGIN { printf "%.2f", k / 1024 }'
}

# ---- measurements -----------------------------------------------------------------

# measure_ping REP PATH DST
measure_ping() {
	local rep=$1 path=$2 dst=$3 out="$WORK/ping.txt" limit p50 p99 got sent
	limit=$(awk -v n="$PINGS" -v i="$PING_INTERVAL" 'BEGIN { printf "%d", n * i + 10 }')
	run_child "$limit" "$out" ip netns exec "$NS_A" ping -n -c "$PINGS" -i "$PING_INTERVAL" -W 1 "$dst" || true
	if ! read -r p50 p99 got sent < <(python3 "$HELPER" ping "$out" 2>/dev/null); then
		note "run $rep, $path: ping got no replies"
		return 0
	fi
	((got == sent)) || note "run $rep, $path: $((sent - got)) of $sent pings lost"
	sample "$rep" "$path" rtt_p50_ms "$p50"
	sample "$rep" "$path" rtt_p99_ms "$p99"
}

# measure_tcp REP PATH DST STREAMS: one iperf3 run from A to B; with daemons, their CPU.
measure_tcp() {
	local rep=$1 path=$2 dst=$3 streams=$4 out="$WORK/iperf-$2-$4.json" i t0 t1 bps bytes
	ip netns exec "$NS_B" timeout --kill-after=5 $((SECONDS_PER_RUN + 40)) iperf3 -s -1 -B "$dst" -p 5201 >"$WORK/iperf-server.log" 2>&1 &
	SERVER=$!
	for ((i = 0; i < 100; i++)); do
		in_b ss -Hltn "sport = :5201" 2>/dev/null | grep -q . && break
		alive "$SERVER" || break
		sleep 0.05
	done
	local pids=() t0="" t1="" r0="" r1=""
	if [ -n "$DAEMON_A" ]; then
		pids=("$DAEMON_A" "$DAEMON_B")
		t0=$(python3 "$HELPER" cpu "${pids[@]}") || t0=""
	fi
	local f0="" f1=""
	if [ -n "$DAEMON_R" ]; then
		r0=$(python3 "$HELPER" cpu "$DAEMON_R") || r0=""
		f0=$(relay_forwarded) || f0=""
	fi
	if [ -n "$PERF_DIR" ] && [ "$PERF_WANTED" = "$path-$streams" ]; then
		start_perf
	fi
	run_child $((SECONDS_PER_RUN + 30)) "$out" ip netns exec "$NS_A" \
		iperf3 -c "$dst" -p 5201 -t "$SECONDS_PER_RUN" -P "$streams" -J --connect-timeout 5000 || true
	if ((${#pids[@]})); then
		t1=$(python3 "$HELPER" cpu "${pids[@]}") || t1=""
	fi
	if [ -n "$r0" ]; then r1=$(python3 "$HELPER" cpu "$DAEMON_R") || r1=""; fi
	if [ -n "$f0" ]; then f1=$(relay_forwarded) || f1=""; fi
	if [ -n "$PERF" ]; then finish_perf; fi
	stop "$SERVER" 2
	SERVER=""
	if ! read -r bps bytes < <(python3 "$HELPER" iperf "$out" 2>/dev/null); then
		note "run $rep, $path, $streams stream(s): iperf3 failed: $(python3 "$HELPER" iperf "$out" 2>&1 | tail -n 1)"
		return 0
	fi
	sample "$rep" "$path" "tcp${streams}_gbps" "$(awk -v b="$bps" 'BEGIN { printf "%.4f", b / 1e9 }')"
	if [ -n "$t0" ] && [ -n "$t1" ] && ((bytes > 0)); then
		sample "$rep" "$path" "cpu${streams}_s_per_gb" \
			"$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN { printf "%.4f", d / hz / (b / 1e9) }')"
	fi
	if [ -n "$r0" ] && [ -n "$r1" ] && ((bytes > 0)); then
		sample "$rep" "$path" "relay_cpu${streams}_s_per_gb" \
			"$(awk -v d=$((r1 - r0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN { printf "%.4f", d / hz / (b / 1e9) }')"
	fi
	# What R forwarded (both directions, whole RELAY messages) per byte iperf3 received:
	# above 1 when the data went through R, about 0 when it found another way.
	if [ -n "$f0" ] && [ -n "$f1" ] && ((bytes > 0)); then
		sample "$rep" "$path" "relay_fwd${streams}_per_byte" "$(awk -v d=$((f1 - f0)) -v b="$bytes" 'BEGIN { printf "%.4f", d / b }')"
		((f1 - f0 >= bytes)) || note "run $rep, relay, $streams stream(s): R forwarded $((f1 - f0)) bytes while iperf3 received $bytes"
	fi
}

# ---- profile (--perf) ---------------------------------------------------------------

PERF_WANTED=""
[ -n "$PERF_DIR" ] && PERF_WANTED="udp-1"
thread_cpu() { # PID LABEL: per-thread utime+stime ticks, "LABEL TID COMM TICKS"
	local pid=$1 label=$2 task line rest
	for task in /proc/"$pid"/task/*; do
		read -r line 2>/dev/null <"$task/stat" || continue
		rest=${line##*) }
		# shellcheck disable=SC2086
		set -- $rest
		printf '%s %s %s %s\n' "$label" "${task##*/}" "$(cat "$task/comm")" $((${12} + ${13}))
	done
}
start_perf() {
	mkdir -p "$PERF_DIR"
	{ thread_cpu "$DAEMON_A" a; thread_cpu "$DAEMON_B" b; } >"$PERF_DIR/threads-before.txt"
	perf record -F 499 -g -o "$PERF_DIR/perf.data" -p "$DAEMON_A,$DAEMON_B" >"$PERF_DIR/perf-record.log" 2>&1 &
	PERF=$!
}
finish_perf() {
	{ thread_cpu "$DAEMON_A" a; thread_cpu "$DAEMON_B" b; } >"$PERF_DIR/threads-after.txt"
	kill -INT "$PERF" 2>/dev/null || true
	stop "$PERF" 10
	PERF=""
	PERF_WANTED=""
	timeout 120 perf report -i "$PERF_DIR/perf.data" --stdio --no-children --percent-limit 0.5 \
		--sort dso,symbol >"$PERF_DIR/report-self.txt" 2>/dev/null || true
	timeout 120 perf report -i "$PERF_DIR/perf.data" --stdio --children --percent-limit 2 \
		--sort symbol -g none >"$PERF_DIR/report-children.txt" 2>/dev/null || true
	log "profile in $PERF_DIR"
}

# ---- the runs ------------------------------------------------------------------------

declare -A BROKEN=() # paths whose tunnel did not come up once: not tried again
run_path() { # REP PATH
	local rep=$1 path=$2 dst=$INNER_B
	if [ "$path" = underlay ]; then
		dst=$UNDER_B
	else
		[ -z "${BROKEN[$path]:-}" ] || return 0
		if ! start_daemons "$path" "$rep"; then
			BROKEN[$path]=1
			note "stt-tun over $path: n/a, not tried again in later runs"
			return 0
		fi
	fi
	log "run $rep/$RUNS: $path"
	measure_ping "$rep" "$path" "$dst"
	measure_tcp "$rep" "$path" "$dst" 1
	measure_tcp "$rep" "$path" "$dst" 4
	if [ "$path" != underlay ]; then
		local side pid rss now
		if [ "$path" = relay ] && now=$(peer_path bench-b) && [ "$now" != "relay bench-r" ]; then
			note "run $rep, relay: after the measurements A's path to bench-b is '$now', not 'relay bench-r'"
		fi
		for side in a b r; do
			case $side in
			a) pid=$DAEMON_A ;;
			b) pid=$DAEMON_B ;;
			*) pid=$DAEMON_R ;;
			esac
			[ -n "$pid" ] || continue
			if rss=$(mib "$pid" VmHWM); then
				sample "$rep" "$path" "peak_rss_${side}_mib" "$rss"
			else
				note "run $rep, $path: daemon ${side^^} died during the run; see its log"
			fi
		done
		stop_daemons
	fi
}

PATHS=(underlay "${MODES[@]}")
per_run=$((${#PATHS[@]} * (2 * SECONDS_PER_RUN + 8) + 10))
log "$RUNS run(s) of ${PATHS[*]}: about $((RUNS * per_run / 60 + 1)) min; namespaces $NS_A $NS_B $NS_R"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta kernel "$(uname -r)"
meta nproc "$(nproc)"
meta cpu "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
meta stt_tun "$("$BIN" version 2>/dev/null || echo unknown)"
meta iperf3 "$(iperf3 --version | head -n 1)"
meta reps "$RUNS"
meta seconds "$SECONDS_PER_RUN"
meta pings "$PINGS"
meta ping_interval_ms "$(awk -v i="$PING_INTERVAL" 'BEGIN { print i * 1000 }')"
meta load_before "$(loadavg)"
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" -v n="$(nproc)" 'BEGIN { exit !(l > n * 0.75) }'; then
	note "load average $load1 on $(nproc) CPUs at start: other work shares the CPUs, figures will be noisy"
fi

for ((rep = 1; rep <= RUNS; rep++)); do
	order=("${PATHS[@]}")
	if ((rep % 2 == 0)); then # alternate the order so drift does not favour one path
		order=()
		for ((i = ${#PATHS[@]} - 1; i >= 0; i--)); do order+=("${PATHS[i]}"); done
	fi
	for path in "${order[@]}"; do
		run_path "$rep" "$path"
	done
done
meta load_after "$(loadavg)"

echo
echo "stt-tun benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), kernel $(uname -r)"
echo "load average before: $(grep '^load_before=' "$META" | cut -d= -f2), after: $(loadavg)"
echo
if [ -n "$JSON_OUT" ]; then
	python3 "$HELPER" report "$SAMPLES" "$META" --json "$JSON_OUT"
	log "JSON in $JSON_OUT"
else
	python3 "$HELPER" report "$SAMPLES" "$META"
fi
