package main

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The daemon lifts its soft limit on open files to the hard limit.
func TestRaiseFileLimitToHard(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	if orig.Max < 2 {
		t.Skipf("hard limit %d too low to lower the soft one", orig.Max)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })
	// Just below the hard limit: low enough to need raising, high enough that no other
	// test of the process runs out of files meanwhile.
	low := syscall.Rlimit{Cur: orig.Max - 1, Max: orig.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	got, err := raiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var now syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now); err != nil {
		t.Fatal(err)
	}
	if now.Cur != orig.Max || got != orig.Max {
		t.Fatalf("soft limit %d (reported %d), want the hard limit %d", now.Cur, got, orig.Max)
	}
}

// The systemd unit sets the limit on open files the daemon raises itself to, above what
// the listeners' bounds can use.
func TestUnitSetsLimitNOFILE(t *testing.T) {
	unit := string(readFile(t, "../../scripts/stt-tun@.service"))
	for line := range strings.Lines(unit) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "LimitNOFILE=")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("LimitNOFILE=%s: not a single number: %v", v, err)
		}
		// 512 pending and 256 upgraded WebSocket connections, the UDP sockets, the
		// control and metrics listeners and their clients.
		if n < 4096 {
			t.Fatalf("LimitNOFILE=%d leaves too little room above the listeners' bounds", n)
		}
		return
	}
	t.Fatal("no LimitNOFILE in scripts/stt-tun@.service")
}
