#!/usr/bin/env bash
# nat-matrix.sh — the NAT matrix of docs/reliability.md, from the NAT lab.
#
# Runs TestNATLabMatrix (tests/e2e/natlab_matrix_test.go): a public bootstrap member, a
# public relay member and two members behind a router of every kind (public, easy,
# hard-random, hard-fully-random, firewall, udp-blocked), each configured with only the
# seed, its key and the bootstrap address. For every pair of kinds it sends 20 MiB from
# one member to the other on their mesh addresses, compares SHA-256 at both ends, and
# reads the path each end reports for the other (`stt-tun status --json`: path,
# relay_via, path_reason) and the NAT type each reports for itself (mesh.nat). It prints
# the result as a markdown table, ready to paste.
#
# The lab lives in network namespaces with names unique to the run, its routers'
# nftables rules in their own namespaces; all of it is removed at the end, also on
# failure. Nothing outside them is touched but a temporary directory.
#
# Needs root, Go and bin/stt-tun (built when missing, or with --build). About a minute
# and a half on 2 CPUs.
#
# Usage: sudo scripts/nat-matrix.sh [--build] [-o FILE]
set -euo pipefail

usage() {
	cat <<'EOF'
usage: sudo scripts/nat-matrix.sh [--build] [-o FILE]

  --build    run `make build` first even if bin/stt-tun exists
  -o FILE    also write the table (with its header) to FILE

Exit status: 0 when every cell is as expected (the transfer intact, the path both ends
report, the NAT type each reports; see tests/e2e/natlab_test.go); the table is printed
either way, and the failures after it.
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
build=""
out=""
while (($#)); do
	case $1 in
	--build) build=1 ;;
	-o)
		[ $# -ge 2 ] || { usage >&2; exit 2; }
		out=$2
		shift
		;;
	-h | --help) usage; exit 0 ;;
	*) echo "nat-matrix: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

[ "$(id -u)" = 0 ] || { echo "nat-matrix: needs root (network namespaces); try sudo" >&2; exit 1; }
command -v go >/dev/null || { echo "nat-matrix: go not found" >&2; exit 1; }
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || { echo "nat-matrix: nft not found; run 'make deps'" >&2; exit 1; }
if [ -n "$build" ] || [ ! -x bin/stt-tun ]; then
	make build >/dev/null
fi

tmp=$(mktemp -d /tmp/nat-matrix.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

echo "nat-matrix: running the NAT lab (about a minute and a half)..." >&2
status=0
STT_NATLAB_MATRIX=1 STT_NATLAB_TABLE="$tmp/table.md" \
	go test -count=1 -tags e2e -timeout 20m -run '^TestNATLabMatrix$' -v ./tests/e2e/ >"$tmp/log" 2>&1 || status=$?

if [ ! -s "$tmp/table.md" ]; then
	echo "nat-matrix: the test wrote no table (exit $status); its output:" >&2
	tail -n 60 "$tmp/log" >&2
	exit 1
fi

{
	commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | head -c1)
	printf 'NAT matrix, %s, commit `%s`%s; %s CPUs, Linux %s, %s.\n' \
		"$(date -u '+%Y-%m-%d %H:%M UTC')" "$commit" "${dirty:+ (with local changes)}" \
		"$(nproc)" "$(uname -r)" "$(go env GOVERSION)"
	cat "$tmp/table.md"
} >"$tmp/out.md"
cat "$tmp/out.md"
[ -z "$out" ] || cp "$tmp/out.md" "$out"
if [ "$status" != 0 ]; then
	echo >&2
	echo "nat-matrix: the test FAILED (exit $status); its failures:" >&2
	grep -E '^\s+natlab.*_test.go:[0-9]+: ' "$tmp/log" | grep -v 'NAT matrix' | head -n 40 >&2 || true
	grep -E -- '^--- FAIL' "$tmp/log" >&2 || true
fi
exit "$status"
