#!/usr/bin/env bash
# fuzz.sh — run every Go fuzz target in the repository for a while each.
#
#   scripts/fuzz.sh [FUZZTIME]        (default 30s; `make fuzz FUZZTIME=5m`)
#
# Finds every `func FuzzXxx(` in the *_test.go files tracked by git (or all of them
# outside git) and runs each alone in its package:
#
#   go test -run '^$' -fuzz '^FuzzXxx$' -fuzztime FUZZTIME ./pkg
#
# A target that finds a crasher fails the run; Go has then written the input to
# pkg/testdata/fuzz/FuzzXxx/, where it becomes a regression test of `go test` once
# committed. Every target runs even after one fails; the summary lists the failures.
#
# Go before 1.27 has a race at the end of a duration-based -fuzztime (golang/go#75804):
# a worker still busy when the deadline fires makes the target FAIL with a bare
# "context deadline exceeded" and no input written. That is no finding, so such a run
# is retried (up to twice); only a run that writes a failing input, panics, or fails in any
# other way counts as a failure.
# Extra arguments for `go test` may be given in FUZZFLAGS (e.g. FUZZFLAGS=-parallel=2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime=${1:-${FUZZTIME:-30s}}
go=${GO:-go}

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	files=$(git ls-files --cached --others --exclude-standard '*_test.go')
else
	files=$(find . -name '*_test.go' -not -path './.git/*')
fi

# "dir name" pairs, one per target, in a stable order.
targets=$(for f in $files; do
	[ -f "$f" ] || continue
	sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*\*testing\.F).*/\1/p' "$f" |
		while read -r name; do printf '%s %s\n' "$(dirname "$f")" "$name"; done
done | sort -u)

if [ -z "$targets" ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi

count=$(printf '%s\n' "$targets" | wc -l)
echo "fuzz: $count targets, $fuzztime each"
failed=()
start=$SECONDS
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# deadline_race LOG: true when the failed run in LOG is the toolchain's end-of-fuzztime
# race and not a finding: the deadline message, and no written input, panic or test error.
deadline_race() {
	grep -q 'context deadline exceeded' "$1" &&
		! grep -qE 'Failing input written to|panic:|_test\.go:[0-9]+:' "$1"
}
while read -r dir name; do
	pkg="./${dir#./}"
	echo "==> $pkg $name"
	ok=0
	for _ in 1 2 3; do
		# shellcheck disable=SC2086 # FUZZFLAGS is a list of flags
		if "$go" test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" ${FUZZFLAGS:-} "$pkg" 2>&1 | tee "$log"; then
			ok=1
			break
		fi
		if ! deadline_race "$log"; then
			break
		fi
		echo "fuzz: $name: bare 'context deadline exceeded' with no input written (golang/go#75804); retrying"
	done
	[ "$ok" = 1 ] || failed+=("$pkg $name")
done <<<"$targets"

echo "fuzz: $count targets in $((SECONDS - start))s"
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: FAILED (inputs saved under each package's testdata/fuzz/; commit them as regression tests):" >&2
	printf '  %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "fuzz: ok"
