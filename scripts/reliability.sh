#!/usr/bin/env bash
# reliability.sh — the figures of docs/reliability.md, from the lab.
#
# Runs the fault and attack scenarios of tests/e2e (faults_test.go, attack_test.go,
# dos_test.go) RUNS times. Each scenario appends its measurements as a JSON line to a figures file
# (STT_FIGURES); scripts/figures turns them into the table of docs/reliability.md:
# per scenario the median [min–max] recovery time over the runs, the bytes delivered
# intact, and the drops the nodes counted.
#
# The scenarios build their own network namespaces (unique names), send only to
# addresses inside them, and remove them, their processes and links at the end, also on
# failure; this script adds nothing to the machine but a temporary directory.
#
# Needs root, Go, and bin/stt-tun (built with `make build` when missing or with
# --build). One run takes about 2 minutes (the black hole alone is 30 s); RUNS=5 about 10.
#
# Usage: sudo scripts/reliability.sh [-n RUNS] [-p PARALLEL] [--run REGEXP] [--json FILE] [--build] [--flood N]
set -euo pipefail

usage() {
	cat <<'EOF'
usage: sudo scripts/reliability.sh [options]

  -n RUNS        runs of every scenario (default 5)
  -p PARALLEL    scenarios at once (go test -parallel, default 2)
  --run REGEXP   only the tests matching REGEXP (default: all fault and attack tests)
  --json FILE    also keep the raw measurements (JSON lines) in FILE
  --build        run `make build` first even if bin/stt-tun exists
  --flood N      connections of the WebSocket connection flood, against a daemon
                 allowed N file descriptors (default 20000; make test uses 4000
                 against 2048)
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
runs=5
parallel=2
run='^(TestLossyUnderlay|TestCorruptedDatagrams|TestBlackHole|TestPeerRestart|TestRoaming|TestRekeyUnderLoad|TestHandshakeMessageLoss|TestReplayAttack|TestHelloFloodNonMember|TestHelloFloodMember|TestHandshakeReplayLockout|TestMemberFloodManySources|TestMalformedFrames|TestEmptyDatagramFlood|TestVersionLogFlood|TestWebSocketConnectionFlood)$'
flood=20000
keep=""
build=0
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	-p) parallel=$2; shift 2 ;;
	--run) run=$2; shift 2 ;;
	--json) keep=$2; shift 2 ;;
	--build) build=1; shift ;;
	--flood) flood=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
case $runs in '' | *[!0-9]*) echo "reliability: -n needs a number" >&2; exit 2 ;; esac
case $flood in '' | *[!0-9]*) echo "reliability: --flood needs a number" >&2; exit 2 ;; esac

[ "$(id -u)" = 0 ] || { echo "reliability: needs root (network namespaces)" >&2; exit 1; }
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "reliability: go not found" >&2; exit 1; }
if [ $build = 1 ] || [ ! -x bin/stt-tun ]; then
	make build
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
figures=$tmp/figures.jsonl
: >"$figures"

# The test binary is built once; every run uses it.
go test -c -tags e2e -o "$tmp/e2e.test" ./tests/e2e/

failed=0
for ((i = 1; i <= runs; i++)); do
	echo "==> run $i of $runs"
	start=$SECONDS
	# -test.count=1 and a fresh process per run: nothing carries over between runs.
	if ! (cd tests/e2e && STT_FIGURES=$figures STT_WSFLOOD_CONNS=$flood STT_WSFLOOD_NOFILE=$flood \
		"$tmp/e2e.test" -test.run "$run" \
		-test.parallel "$parallel" -test.timeout 15m >"$tmp/run$i.log" 2>&1); then
		failed=$((failed + 1))
		echo "    run $i FAILED; its failures:" >&2
		grep -E '^\s*--- FAIL' "$tmp/run$i.log" >&2 || tail -20 "$tmp/run$i.log" >&2
	fi
	grep -E 'KNOWN BUG' "$tmp/run$i.log" | sed 's/^ */    /' | sort -u || true
	echo "    $((SECONDS - start))s"
done

[ -z "$keep" ] || cp "$figures" "$keep"
echo
echo "Figures from $runs runs, $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -srm), $(nproc) CPUs, $(go version | cut -d' ' -f3)"
echo
go run ./scripts/figures <"$figures"
if [ $failed -gt 0 ]; then
	echo "reliability: $failed of $runs runs had failing tests; figures above are from the scenarios that completed" >&2
	exit 1
fi
