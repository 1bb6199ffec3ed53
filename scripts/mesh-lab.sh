#!/usr/bin/env bash
# mesh-lab.sh — the mesh figures of docs/benchmarks.md ("Mesh"), in network namespaces.
#
# Runs TestMeshLabFigures (tests/e2e/meshlab_bench_test.go) against bin/stt-tun: a
# router namespace and six member namespaces on 198.18.i.0/24. Per run, in a fresh
# lab: five members come up and know each other, then a sixth starts with only the
# first as bootstrap; the time from its `stt-tun up` returning until it knows the five
# (with their mesh addresses), and until each of the five knows it, polled every 50 ms.
# After the last run the six are watched at rest: the bytes each namespace sends on its
# veth, and the mesh's own gossip counters.
#
# Needs root, ip(8), Go. Builds bin/stt-tun (`make build`) when missing. On any exit,
# Ctrl-C included, the test takes its daemons down and deletes its namespaces; should
# the test binary die without doing so, this script deletes the namespaces named after
# its PID and stops, by PID, the daemons whose command line names its private temporary
# directory. No traffic leaves the namespaces.
#
# Usage: sudo scripts/mesh-lab.sh [-n RUNS] [--idle DURATION] [--poll DURATION] [--json FILE]
set -euo pipefail

usage() {
	cat <<'EOF'
usage: sudo scripts/mesh-lab.sh [options]

  -n RUNS          joins to measure, each in a fresh lab (default 5)
  --idle DURATION  how long the last lab is watched at rest (default 2m; 10s..10m)
  --json FILE      also write every sample as JSON to FILE
  --poll DURATION  how often each daemon's status is asked for (default 50ms)
  --idle-timeout DURATION
                   [discovery] idle_timeout of every member (default: its default)
  -h, --help       this help
EOF
}
die() {
	echo "mesh-lab: $*" >&2
	exit 1
}

RUNS=5
IDLE=2m
POLL=50ms
IDLE_TIMEOUT=""
JSON_OUT=""
while (($#)); do
	case "$1" in
	-n) RUNS=${2:?-n needs a number}; shift 2 ;;
	--idle) IDLE=${2:?--idle needs a duration}; shift 2 ;;
	--idle-timeout) IDLE_TIMEOUT=${2:?--idle-timeout needs a duration}; shift 2 ;;
	--poll) POLL=${2:?--poll needs a duration}; shift 2 ;;
	--json) JSON_OUT=$(realpath -m -- "${2:?--json needs a file}"); shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] && ((RUNS <= 50)) || die "-n must be from 1 to 50"
[ "$(id -u)" = 0 ] || die "needs root (namespaces, TUN devices): sudo $0"
for tool in ip go timeout; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -x "$ROOT/bin/stt-tun" ] || make -C "$ROOT" build >&2 || die "make build failed"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stt-meshlab.XXXXXX")
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
		# The test ends through its own cleanups on SIGTERM; give it time for them.
		kill -TERM "$TESTPID" 2>/dev/null
		for ((i = 0; i < 600; i++)); do
			alive "$TESTPID" || break
			sleep 0.1
		done
		alive "$TESTPID" && kill -KILL "$TESTPID" 2>/dev/null
		wait "$TESTPID" 2>/dev/null
	fi
	# Backstop for a test binary that died without its cleanups: daemons whose command
	# line names our private directory (their state directories are inside it), then
	# the namespaces named after the test binary's PID (internal/nslab: stt-PID-…).
	for f in /proc/[0-9]*/cmdline; do
		{ line=$(tr '\0' ' ' <"$f"); } 2>/dev/null || continue
		if [[ $line == *"--state-dir $WORK/"* ]]; then
			pid=${f#/proc/}
			kill -TERM "${pid%/cmdline}" 2>/dev/null
		fi
	done
	if [ -n "$TESTPID" ]; then
		for ns in $(ip netns list | awk '{print $1}' | grep -E "^stt-$TESTPID-" || true); do
			ip netns delete "$ns" 2>/dev/null || echo "mesh-lab: could not delete namespace $ns" >&2
		done
	fi
	rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "mesh-lab: building the test binary" >&2
(cd "$ROOT" && go test -c -tags e2e -o "$WORK/e2e.test" ./tests/e2e/) || die "go test -c failed"
echo "mesh-lab: $RUNS runs, then $IDLE at rest (about $((RUNS * 20)) s + the rest)" >&2
cd "$ROOT/tests/e2e"
TMPDIR=$WORK STT_MESH_LAB=1 STT_MESH_LAB_RUNS=$RUNS STT_MESH_LAB_IDLE=$IDLE STT_MESH_LAB_POLL=$POLL STT_MESH_LAB_IDLE_TIMEOUT=$IDLE_TIMEOUT STT_MESH_LAB_JSON=$JSON_OUT \
	"$WORK/e2e.test" -test.run '^TestMeshLabFigures$' -test.v -test.count=1 -test.timeout 20m &
TESTPID=$!
rc=0
wait "$TESTPID" || rc=$?
TESTPID=""
exit "$rc"
