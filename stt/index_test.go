package stt

import (
	"fmt"
	"testing"
)

// BenchmarkIndexInstall: one session installed into and removed from the index of a
// node that has N sessions already (a handshake, and the expiry of the session it
// replaced).
func BenchmarkIndexInstall(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			t := newIndexTable()
			for range n {
				t.install(&session{localIndex: t.reserve()})
			}
			b.ReportAllocs()
			for b.Loop() {
				s := &session{localIndex: t.reserve()}
				t.install(s)
				t.remove(s)
			}
		})
	}
}

// TestIndexTableFindsWhatItHolds: sessions installed are found by their index, in
// whichever shard, until removed; counts counts them all.
func TestIndexTableFindsWhatItHolds(t *testing.T) {
	tab := newIndexTable()
	var ss []*session
	for range 500 {
		s := &session{localIndex: tab.reserve()}
		tab.install(s)
		ss = append(ss, s)
	}
	if n, pending := tab.counts(); n != 500 || pending != 0 {
		t.Fatalf("counts %d sessions, %d pending; want 500, 0", n, pending)
	}
	for _, s := range ss {
		if tab.lookup(s.localIndex) != s {
			t.Fatalf("index %d does not find its session", s.localIndex)
		}
	}
	tab.remove(ss[:250]...)
	for i, s := range ss {
		if got := tab.lookup(s.localIndex); (got == s) != (i >= 250) {
			t.Fatalf("session %d (removed: %v) looked up as %v", i, i < 250, got)
		}
	}
	if n, _ := tab.counts(); n != 250 {
		t.Fatalf("counts %d sessions after removing 250 of 500", n)
	}
}
