#!/usr/bin/env bash
# lab50.sh — the fifty-node lab of docs/benchmarks.md ("Scale", "Fifty-node lab").
#
# Runs TestMeshScaleLabFigures (tests/e2e/scalelab_bench_test.go) against bin/stt-tun: an
# "internet" namespace, two public introducers (relay = true) on it, and 48 members
# behind four NAT routers (router namespaces with nftables rules: two easy NATs with
# `masquerade`, a stateful firewall, a hard NAT that maps each destination to a random
# port), every member configured with the seed, its key and the introducers' addresses
# only. It reports:
#   - how long after the last member's `stt-tun up` returned every node lists every
#     other with its mesh address (status, polled over each control socket, then
#     checked with `stt-tun status --json`);
#   - the bytes and packets each node's namespace sends on its link at rest, with the
#     gossip counters, and each daemon's CPU, over --rest (default 5 minutes); for the
#     introducers and the members apart, where those bytes go: frames by kind
#     (keepalive, ack, ping, probe, reliable, control, handshake), relaying, and the
#     gossip by message type;
#   - each daemon's resident memory (VmRSS) once converged, after the rest, after the
#     pings;
#   - a ping matrix: `stt-tun ping -c 1` over --pairs random ordered pairs (default
#     100), the path that answered and the round-trip time; every pair must answer.
#
# Needs root, ip(8), nft(8) and Go; builds bin/stt-tun (`make build`) when missing.
# About 2 minutes to build the lab and converge, then the rest period, then under a
# minute of pings and 1 minute to take it all down, on 2 CPUs. Everything is made inside
# namespaces named `stt-<pid of the test binary>-<random>-<node>`: the veth pairs are
# created in them and the routers' nftables rules live in them, so deleting the
# namespaces removes both; the host's own network is not touched. On any exit, Ctrl-C
# included, the test takes its daemons down (`stt-tun down`, then SIGKILL by PID) and
# deletes its namespaces; should the test binary die without doing so, this script
# stops, by PID, the daemons whose --state-dir lies in its private temporary directory,
# and deletes the namespaces named after the test binary's PID.
#
# Usage: sudo scripts/lab50.sh [-n NODES] [--rest DURATION] [--pairs N] [--seed N] [--json FILE] [--log FILE]
set -euo pipefail

usage() {
	cat <<'EOF'
usage: sudo scripts/lab50.sh [options]

  -n NODES         nodes in the lab, the two introducers included (default 50; 6..56)
  --rest DURATION  how long the converged mesh is watched at rest (default 5m; 10s..30m)
  --pairs N        random ordered pairs to ping (default 100)
  --seed N         seed of the pair sample (default: the clock; the report prints it)
  --json FILE      also write every figure as JSON to FILE
  --log FILE       also copy the test's whole output to FILE
  -h, --help       this help

Exit status: 0 when every member started, the mesh converged and every pair answered;
the figures are printed either way (the lines starting with LAB50).
EOF
}
die() {
	echo "lab50: $*" >&2
	exit 1
}

NODES=50
REST=5m
PAIRS=100
SEED=""
JSON_OUT=""
LOG_OUT=""
while (($#)); do
	case "$1" in
	-n) NODES=${2:?-n needs a number}; shift 2 ;;
	--rest) REST=${2:?--rest needs a duration}; shift 2 ;;
	--pairs) PAIRS=${2:?--pairs needs a number}; shift 2 ;;
	--seed) SEED=${2:?--seed needs a number}; shift 2 ;;
	--json) JSON_OUT=$(realpath -m -- "${2:?--json needs a file}"); shift 2 ;;
	--log) LOG_OUT=$(realpath -m -- "${2:?--log needs a file}"); shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
[[ $NODES =~ ^[0-9]+$ ]] && ((NODES >= 6 && NODES <= 56)) || die "-n must be from 6 to 56"
[[ $PAIRS =~ ^[1-9][0-9]*$ ]] || die "--pairs must be a positive number"
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || die "--seed must be a number"
[[ $REST =~ ^([0-9]+m)?([0-9]+s)?$ && -n $REST ]] || die "--rest must be a duration like 5m, 90s or 2m30s (10s..30m)"
[ "$(id -u)" = 0 ] || die "needs root (namespaces, TUN devices, nftables): sudo $0"
for tool in ip go; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || die "nft not found; run 'make deps'"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -x "$ROOT/bin/stt-tun" ] || make -C "$ROOT" build >&2 || die "make build failed"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stt-lab50.XXXXXX")
TESTPID=""

# alive PID: true while PID is a running (not zombie) process.
alive() {
	local line rest
	[ -n "$1" ] && read -r line 2>/dev/null <"/proc/$1/stat" || return 1
	rest=${line##*) }
	[ "${rest%% *}" != Z ]
}

cleanup() {
	local rc=$? i pid ns f line
	trap - EXIT INT TERM
	set +e
	if [ -n "$TESTPID" ] && alive "$TESTPID"; then
		# The test ends through its own cleanups on SIGTERM: fifty daemons to take
		# down and sixty namespaces to delete; give it time for them.
		kill -TERM "$TESTPID" 2>/dev/null
		for ((i = 0; i < 1800; i++)); do
			alive "$TESTPID" || break
			sleep 0.1
		done
		alive "$TESTPID" && kill -KILL "$TESTPID" 2>/dev/null
		wait "$TESTPID" 2>/dev/null
	fi
	# Backstop for a test binary that died without its cleanups: daemons whose command
	# line names our private directory (their state directories are inside it), by PID,
	# then the namespaces named after the test binary's PID (internal/nslab:
	# stt-PID-…), which takes the links and nftables rules inside them along.
	for f in /proc/[0-9]*/cmdline; do
		{ line=$(tr '\0' ' ' <"$f"); } 2>/dev/null || continue
		if [[ $line == *"--state-dir $WORK/"* ]]; then
			pid=${f#/proc/}
			kill -TERM "${pid%/cmdline}" 2>/dev/null
		fi
	done
	if [ -n "${LASTPID:-}" ]; then
		for ns in $(ip netns list | awk '{print $1}' | grep -E "^stt-$LASTPID-" || true); do
			ip netns delete "$ns" 2>/dev/null || echo "lab50: could not delete namespace $ns" >&2
		done
	fi
	if [ -s "$WORK/log" ]; then
		[ -z "$LOG_OUT" ] || cp "$WORK/log" "$LOG_OUT"
		echo >&2
		echo "lab50: figures:" >&2
		grep -E '^\s+scalelab_bench_test\.go:[0-9]+: LAB50' "$WORK/log" | sed -E 's/^\s+scalelab_bench_test\.go:[0-9]+: //' || true
		grep -E -- '^--- (FAIL|PASS)' "$WORK/log" >&2 || true
	fi
	rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "lab50: building the test binary" >&2
(cd "$ROOT" && go test -c -tags e2e -o "$WORK/e2e.test" ./tests/e2e/) || die "go test -c failed"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -c1)" ] || COMMIT="$COMMIT (with local changes)"
echo "lab50: $NODES nodes, $REST at rest, $PAIRS pairs; commit $COMMIT" >&2
cd "$ROOT/tests/e2e"
TMPDIR=$WORK STT_LAB50=1 STT_LAB50_NODES=$NODES STT_LAB50_REST=$REST STT_LAB50_PAIRS=$PAIRS \
	STT_LAB50_SEED=$SEED STT_LAB50_JSON=$JSON_OUT STT_LAB50_COMMIT=$COMMIT \
	"$WORK/e2e.test" -test.run '^TestMeshScaleLabFigures$' -test.v -test.count=1 -test.timeout 60m \
	> >(tee "$WORK/log") 2>&1 &
TESTPID=$!
LASTPID=$TESTPID
rc=0
wait "$TESTPID" || rc=$?
TESTPID=""
exit "$rc"
