package handshake

import (
	"errors"
	"testing"

	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// runSeed runs a handshake whose HELLO is the attempt-th initiation of ini, and reports
// the results or the first error.
func runSeed(ini, resp *Engine, attempt int, idx uint32) (ri, rr Result, err error) {
	in, hello, err := ini.InitiateSeed(attempt, idx, nil, nil)
	if err != nil {
		return ri, rr, err
	}
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		return ri, rr, err
	}
	if _, err = in.ReadChallenge(chal); err != nil {
		return ri, rr, err
	}
	auth, ri, err := in.WriteAuthProof(nil, nil)
	if err != nil {
		return ri, rr, err
	}
	rr, _, err = resp.HandleAuthProof(auth, srcAlice, nil)
	return ri, rr, err
}

// A responder holding two seeds completes handshakes under either, and both sides
// record the seed; the initiator's first attempt uses its first seed, the next attempt
// the other one.
func TestEngineWithTwoSeedsAcceptsEitherAndRecordsWhich(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	if err := resp.SetSeeds([][32]byte{seedA, seedB}); err != nil {
		t.Fatal(err)
	}
	for i, seeds := range [][][32]byte{{seedA}, {seedB}, {seedB, seedA}} {
		if err := ini.SetSeeds(seeds); err != nil {
			t.Fatal(err)
		}
		ri, rr, err := runSeed(ini, resp, 0, uint32(10+i))
		if err != nil {
			t.Fatalf("initiator seeds %d: %v", i, err)
		}
		want := SeedID(seeds[0])
		if ri.SeedID != want || rr.SeedID != want || ri.SendKey != rr.RecvKey {
			t.Fatalf("initiator seeds %d: seed ids %x/%x, want %x", i, ri.SeedID, rr.SeedID, want)
		}
	}
	// Attempts alternate: [B, A] tries B, then A, then B.
	for attempt, want := range [][32]byte{seedB, seedA, seedB} {
		in, _, err := ini.InitiateSeed(attempt, uint32(20+attempt), nil, nil)
		if err != nil || in.SeedID() != SeedID(want) {
			t.Fatalf("attempt %d under %x, want %x (%v)", attempt, in.SeedID(), SeedID(want), err)
		}
	}
}

// A node that moved to the next seed first reaches one that has not on its retry: the
// first HELLO fails mac1 at the responder (no work), the second completes.
func TestInitiatorRetryReachesResponderOnTheOtherSeed(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o) // resp holds seedA only
	if err := ini.SetSeeds([][32]byte{seedB, seedA}); err != nil {
		t.Fatal(err)
	}
	before := resp.DHCount()
	if _, _, err := runSeed(ini, resp, 0, 1); !errors.Is(err, ErrBadMAC1) {
		t.Fatalf("first attempt under the next seed: %v, want bad mac1", err)
	}
	if resp.DHCount() != before {
		t.Fatal("a HELLO under a seed not held cost X25519 work")
	}
	ri, rr, err := runSeed(ini, resp, 1, 2)
	if err != nil || ri.SeedID != SeedID(seedA) || rr.SeedID != SeedID(seedA) {
		t.Fatalf("retry: %v, seeds %x/%x", err, ri.SeedID, rr.SeedID)
	}
}

// Once a seed is dropped, a node holding only it gets no answer (bad mac1), and a
// handshake begun under it before the drop does not complete.
func TestDroppedSeedIsRefused(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o) // both on seedA
	if err := resp.SetSeeds([][32]byte{seedB, seedA}); err != nil {
		t.Fatal(err)
	}
	in, hello, _ := ini.Initiate(7, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.SetSeeds([][32]byte{seedB}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	auth, _, _ := in.WriteAuthProof(nil, nil)
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrBadMAC1) {
		t.Fatalf("AUTH_PROOF under a dropped seed: %v, want bad mac1", err)
	}
	if _, _, err := runSeed(ini, resp, 0, 8); !errors.Is(err, ErrBadMAC1) {
		t.Fatalf("HELLO under a dropped seed: %v, want bad mac1", err)
	}
}

// An AUTH_PROOF under another seed than its HELLO (both held) does not complete the
// half-open handshake: the seed of a handshake is fixed by its HELLO.
func TestAuthProofMustUseTheSeedOfItsHello(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	if err := resp.SetSeeds([][32]byte{seedA, seedB}); err != nil {
		t.Fatal(err)
	}
	in, hello, _ := ini.Initiate(9, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	auth, _, _ := in.WriteAuthProof(nil, nil)
	other, _ := newSeedKeys(seedB)
	m := mac(other.keys.MAC1[:], auth[:wire.AuthMAC1Off])
	copy(auth[wire.AuthMAC1Off:], m[:])
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrBadMAC1) {
		t.Fatalf("AUTH_PROOF re-MACed under the other seed: %v", err)
	}
}

// Cookie replies are sealed under the seed the HELLO used, so that an initiator on
// either seed can open its cookie.
func TestCookieReplyUnderTheHellosSeed(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = -1 // always under load
	ini, resp := newPair(t, o)
	if err := resp.SetSeeds([][32]byte{seedA, seedB}); err != nil {
		t.Fatal(err)
	}
	if err := ini.SetSeeds([][32]byte{seedB}); err != nil {
		t.Fatal(err)
	}
	in, hello, _ := ini.Initiate(11, nil, nil)
	r, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("%v", err)
	}
	if _, err := in.ReadCookieReply(r); err != nil {
		t.Fatalf("cookie under the second seed: %v", err)
	}
}

func TestSetSeedsRefusesNoneTooManyAndRepeats(t *testing.T) {
	_, e := newPair(t, defaultOpts())
	for _, bad := range [][][32]byte{nil, {seedA, seedA}, {key(1), key(2), key(3), key(4), key(5)}} {
		if err := e.SetSeeds(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("SetSeeds(%d seeds) = %v", len(bad), err)
		}
	}
	if ids := e.SeedIDs(); len(ids) != 1 || ids[0] != SeedID(seedA) {
		t.Fatalf("a refused SetSeeds changed the seeds: %x", ids)
	}
}

// The handshake's seed id is the mesh's (statements and status name seeds by it).
func TestSeedIDIsTheMeshSeedID(t *testing.T) {
	if SeedID(seedA) != mesh.SeedID(seedA) {
		t.Fatal("handshake.SeedID differs from mesh.SeedID")
	}
}

// BenchmarkBadMAC1Hello is the cost of a HELLO from a non-member (a flood's), with one
// seed held and with two (during a rotation every seed's mac1 is tried).
func BenchmarkBadMAC1Hello(b *testing.B) {
	for _, n := range []int{1, 2} {
		b.Run(map[int]string{1: "one-seed", 2: "two-seeds"}[n], func(b *testing.B) {
			o := defaultOpts()
			ini, resp := newPair(b, o)
			seeds := [][32]byte{seedA, seedB}[:n]
			if err := resp.SetSeeds(seeds); err != nil {
				b.Fatal(err)
			}
			if err := ini.SetSeeds([][32]byte{key(0x77)}); err != nil {
				b.Fatal(err)
			}
			_, hello, _ := ini.Initiate(1, nil, nil)
			out := make([]byte, 0, 256)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := resp.HandleHello(hello, srcAlice, out); !errors.Is(err, ErrBadMAC1) {
					b.Fatal(err)
				}
			}
		})
	}
}
