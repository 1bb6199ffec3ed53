package mesh

import (
	"net/netip"
	"testing"
	"time"
)

// Fixed inputs of the golden vectors and of most tests.
var (
	testSeed = func() (s [32]byte) {
		for i := range s {
			s[i] = byte(i)
		}
		return
	}()
	testEdSeed = func() (s [32]byte) {
		for i := range s {
			s[i] = byte(0x40 + i)
		}
		return
	}()
	testNow = time.Unix(1767225600, 0) // 2026-01-01T00:00:00Z
)

// edSeedN is the Ed25519 seed of test member n.
func edSeedN(n int) (s [32]byte) {
	s[0], s[1], s[2] = byte(n), byte(n>>8), 0xa5
	return
}

func testRecord() Record {
	return Record{
		Version:   uint64(testNow.UnixNano()),
		Expires:   testNow.Add(30 * time.Minute),
		Name:      "alpha",
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24")},
		Prefixes:  []netip.Prefix{netip.MustParsePrefix("192.168.10.0/24"), netip.MustParsePrefix("2001:db8:10::/48")},
		Endpoints: []Endpoint{
			{Kind: EndpointLocal, Addr: netip.MustParseAddrPort("192.0.2.1:51900")},
			{Kind: EndpointConfigured, Addr: netip.MustParseAddrPort("[2001:db8::1]:51900")},
		},
		WSURL: "wss://alpha.example/stt",
	}
}

func mustMarshal(t testing.TB, r Record, id Identity, netID [16]byte) []byte {
	t.Helper()
	b, err := r.Marshal(id, netID)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return b
}
