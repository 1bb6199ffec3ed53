package handshake

import (
	"crypto/rand"
	"net/netip"
	"testing"
	"time"
)

// TestHalfOpenTableIndexIsOwned: a half-open handshake cannot take the index of
// another, and removing one that is not (or no longer) in the table leaves the one that
// holds its index.
func TestHalfOpenTableIndexIsOwned(t *testing.T) {
	var tbl halfOpenTable
	tbl.init()
	first, second := &halfOpen{local: 5, born: time.Unix(1, 0)}, &halfOpen{local: 5, born: time.Unix(2, 0)}
	if _, ok := tbl.add(first, nil); !ok {
		t.Fatal("first half-open refused")
	}
	if _, ok := tbl.add(second, nil); ok {
		t.Fatal("a second half-open took index 5")
	}
	tbl.remove(second)
	if tbl.byIndex[5] != first || tbl.len() != 1 || tbl.order.Len() != 1 {
		t.Fatalf("after removing the refused one: index 5 holds %p (want %p), %d entries, %d in order",
			tbl.byIndex[5], first, tbl.len(), tbl.order.Len())
	}
}

// TestRateLimitTableBounded: the per-source token buckets hold at most
// MaxRateLimitSources sources; a new source is refused while all are active, and
// admitted once idle ones can be dropped.
func TestRateLimitTableBounded(t *testing.T) {
	var b bucketTable
	b.init()
	now := time.Unix(1_700_000_000, 0)
	addr := func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	for i := range MaxRateLimitSources {
		if !b.take(addr(i), now) {
			t.Fatalf("source %d refused before the table is full", i)
		}
	}
	if b.take(addr(MaxRateLimitSources), now) {
		t.Fatal("a new source was admitted to a full table of active sources")
	}
	if len(b.m) > MaxRateLimitSources {
		t.Fatalf("table holds %d sources, bound %d", len(b.m), MaxRateLimitSources)
	}
	later := now.Add(refillTime)
	if !b.take(addr(MaxRateLimitSources), later) {
		t.Fatal("a new source was refused although every other source is idle")
	}
	if len(b.m) > MaxRateLimitSources {
		t.Fatalf("table holds %d sources, bound %d", len(b.m), MaxRateLimitSources)
	}
}

// TestIdleSourceGetsOnlyABurst: however long a source stays quiet, its bucket holds at
// most CookieBurst tokens.
func TestIdleSourceGetsOnlyABurst(t *testing.T) {
	var b bucketTable
	b.init()
	a := netip.MustParseAddr("192.0.2.7")
	now := time.Unix(1_700_000_000, 0)
	b.take(a, now)
	now = now.Add(time.Hour)
	for i := range CookieBurst {
		if !b.take(a, now) {
			t.Fatalf("token %d refused after an hour's rest", i)
		}
	}
	if b.take(a, now) {
		t.Fatalf("more than %d tokens at once after an hour's rest", CookieBurst)
	}
}

// TestCookieSecretReplacedWhenClockStepsBack: a secret born "in the future" (the
// clock stepped back) is replaced at once rather than living until the clock catches
// up, so no cookie outlives CookieSecretLifetime of clock time.
func TestCookieSecretReplacedWhenClockStepsBack(t *testing.T) {
	var s cookieSecrets
	now := time.Unix(1_700_000_000, 0)
	first, err := s.current(now, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	was := *first
	back, err := s.current(now.Add(-time.Hour), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if *back == was {
		t.Fatal("the secret survived the clock stepping back an hour")
	}
}

// TestCookieBoundToSourcePort: a cookie is bound to the source address and port
// (docs/protocol.md 4.4): another port of the same host, or another host, gets
// another cookie.
func TestCookieBoundToSourcePort(t *testing.T) {
	var secret [32]byte
	secret[0] = 1
	a := cookieFor(&secret, netip.MustParseAddrPort("192.0.2.1:40000"))
	if b := cookieFor(&secret, netip.MustParseAddrPort("192.0.2.1:40001")); a == b {
		t.Fatal("two ports of one address share a cookie")
	}
	if b := cookieFor(&secret, netip.MustParseAddrPort("192.0.2.2:40000")); a == b {
		t.Fatal("two addresses share a cookie")
	}
	if b := cookieFor(&secret, netip.MustParseAddrPort("[::ffff:192.0.2.1]:40000")); a != b {
		t.Fatal("an IPv4-mapped address gets another cookie than the IPv4 address")
	}
}
