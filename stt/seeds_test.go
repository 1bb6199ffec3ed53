package stt

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// seedPair starts two nodes on seed that know each other (a initiates), recording
// SessionUp calls.
func seedPair(t *testing.T, seed [32]byte, lim Limits) (a, b *testNode, la, lb *upLog) {
	t.Helper()
	la, lb = &upLog{}, &upLog{}
	a = startNode(t, nodeOpts{seed: seed, name: "a", timers: lim, config: func(c *Config) { c.SessionUp = la.up }})
	b = startNode(t, nodeOpts{seed: seed, name: "b", timers: lim, config: func(c *Config) { c.SessionUp = lb.up }})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	return a, b, la, lb
}

func sessionSeed(p *Peer) [16]byte {
	id, _ := p.SessionSeed()
	return id
}

// stream sends numbered datagrams from a to b every few milliseconds until stop is
// closed, and returns how many it sent on done.
func stream(t *testing.T, a *testNode, stop <-chan struct{}) <-chan int {
	done := make(chan int, 1)
	exited := make(chan struct{})
	end := make(chan struct{})
	t.Cleanup(func() { close(end); <-exited }) // a test that fails first stops it too
	go func() {
		defer close(exited)
		n := 0
		tk := time.NewTicker(3 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				done <- n
				return
			case <-end:
				return
			case <-tk.C:
			}
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(n))
			if err := a.Peer("b").Send([][]byte{datagram(b[:])}, []uint16{0}); err != nil {
				t.Error(err)
			}
			n++
		}
	}()
	return done
}

// The rotation from the side of the sessions: b learns the next seed first (accepts
// both, still initiates with the current one), then a moves to it. a's session, under
// the seed that is no longer its first, rekeys to the next seed within the spread; it
// is a rekey (SessionUp not fresh at either end), and no datagram sent meanwhile is
// lost.
func TestSessionMovesToTheNextSeedByRekeyWithoutLoss(t *testing.T) {
	cur, next := randKey(t), randKey(t)
	a, b, la, lb := seedPair(t, cur, Limits{SeedRekeySpread: 300 * time.Millisecond})
	established(t, a, b)
	if got := sessionSeed(a.Peer("b")); got != handshake.SeedID(cur) {
		t.Fatalf("session under %x, want the current seed", got)
	}
	stop := make(chan struct{})
	sent := stream(t, a, stop)

	if err := b.SetSeeds([][32]byte{cur, next}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetSeeds([][32]byte{next, cur}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "both ends on the next seed", func() bool {
		return sessionSeed(a.Peer("b")) == handshake.SeedID(next) && sessionSeed(b.Peer("a")) == handshake.SeedID(next) &&
			a.Peer("b").HasSession()
	})
	// b, still before the switch ([current, next]), does not pull the session back.
	time.Sleep(3 * 300 * time.Millisecond) // several spreads; nothing to wait for: a rekey that must not start
	if sessionSeed(a.Peer("b")) != handshake.SeedID(next) || b.SeedStats().Rekeys != 0 {
		t.Fatalf("b pulled the session back to the current seed (%d seed rekeys)", b.SeedStats().Rekeys)
	}
	// Keep sending a little on the new session, then count.
	base := b.h.count.Load()
	waitFor(t, 5*time.Second, "traffic on the new session", func() bool { return b.h.count.Load() > base+20 })
	close(stop)
	n := <-sent
	b.h.waitCount(t, int64(n)+1, 5*time.Second) // +1: the "hello" of established
	if got := b.h.count.Load(); got != int64(n)+1 {
		t.Fatalf("b received %d datagrams, a sent %d", got-1, n)
	}
	for _, l := range []*upLog{la, lb} {
		evs := l.get()
		if len(evs) < 2 || !evs[0].fresh {
			t.Fatalf("SessionUp calls %v, want a fresh one then rekeys", evs)
		}
		for _, e := range evs[1:] {
			if e.fresh {
				t.Fatalf("SessionUp calls %v: the move to the next seed tore the session down", evs)
			}
		}
	}
	if st := a.SeedStats(); st.Rekeys != 1 || st.Closed != 0 || st.IDs[0] != handshake.SeedID(next) {
		t.Fatalf("a's seed stats %+v, want one rekey", st)
	}
}

// A node that moved to the next seed reaches one that has not (its retry uses the
// other seed); the session it gets is under the old seed, and is not rekeyed for it
// (the peer has nothing else), let alone every spread.
func TestMovedNodeReachesOneThatHasNot(t *testing.T) {
	cur, next := randKey(t), randKey(t)
	lim := Limits{SeedRekeySpread: 50 * time.Millisecond, HandshakeRetry: 100 * time.Millisecond}
	a, b, _, _ := seedPair(t, cur, lim)
	if err := a.SetSeeds([][32]byte{next, cur}); err != nil {
		t.Fatal(err)
	}
	badBefore := b.Stats().Drops[DropBadMAC1]
	established(t, a, b)
	if got := sessionSeed(a.Peer("b")); got != handshake.SeedID(cur) {
		t.Fatalf("session under %x, want the seed b holds", got)
	}
	if b.Stats().Drops[DropBadMAC1] == badBefore {
		t.Fatal("a's first HELLO was not under the next seed")
	}
	time.Sleep(300 * time.Millisecond) // several spreads: a seed rekey that must not start
	if r := a.SeedStats().Rekeys; r != 0 || a.Peer("b").Connecting() {
		t.Fatalf("%d seed rekeys with a peer that answers only under the old seed, want none", r)
	}
	roundTrip(t, a, b, "still")
}

// Once a seed is no longer held, sessions under it close at once, and a node that
// holds only that seed cannot make a new one: its HELLOs fail mac1.
func TestDroppedSeedClosesSessionsAndLocksOutItsHolder(t *testing.T) {
	cur, next := randKey(t), randKey(t)
	a, b, _, _ := seedPair(t, cur, Limits{HandshakeRetry: 100 * time.Millisecond})
	established(t, a, b)
	if err := b.SetSeeds([][32]byte{next}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b to close the session under the old seed", func() bool { return !b.Peer("a").HasSession() })
	if st := b.SeedStats(); st.Closed != 1 {
		t.Fatalf("b's seed stats %+v, want one session closed", st)
	}
	bad := b.Stats().Drops[DropBadMAC1]
	a.Peer("b").Rekey()
	sendOne(t, a.Peer("b"), 0, []byte("let me in"))
	waitFor(t, 5*time.Second, "a's HELLOs refused for bad mac1", func() bool { return b.Stats().Drops[DropBadMAC1] >= bad+2 })
	if b.Peer("a").HasSession() || a.Peer("b").HasSession() {
		t.Fatal("a session with the holder of the dropped seed")
	}
}

// Both ends move to a new seed at once, and their seed rekeys cross: each end installs
// two sessions within a round trip (its own handshake's, then the peer's). Between the
// two, the peer still sends on the session before them, the one both ends shared: its
// own new session is not confirmed yet, so it sends on its standby. A datagram sent
// then arrives: the end that installed two sessions still receives on the one before.
// The messages of both nodes are held and let go in the order of the race.
func TestCrossingSeedRekeysLoseNoDatagram(t *testing.T) {
	cur, next := randKey(t), randKey(t)
	a, b, _, _ := seedPair(t, cur, Limits{SeedRekeySpread: time.Millisecond, HandshakeRetry: time.Minute})
	established(t, a, b)
	a.bind.holding.Store(true)
	b.bind.holding.Store(true)
	for _, n := range []*testNode{a, b} {
		if err := n.SetSeeds([][32]byte{next, cur}); err != nil {
			t.Fatal(err)
		}
	}
	held := func(n *testNode, typ byte, what string) {
		t.Helper()
		waitFor(t, 5*time.Second, what, func() bool { return n.bind.holds(typ) > 0 })
	}
	held(a, wire.TypeHello, "a's seed rekey")
	held(b, wire.TypeHello, "b's seed rekey")
	a.bind.release(wire.TypeHello)
	b.bind.release(wire.TypeHello)
	held(a, wire.TypeChallenge, "a's answer to b's HELLO")
	held(b, wire.TypeChallenge, "b's answer to a's HELLO")
	// a completes its own handshake (AUTH_PROOF held), then b's: two new sessions at a.
	b.bind.release(wire.TypeChallenge)
	held(a, wire.TypeAuthProof, "a's AUTH_PROOF")
	a.bind.release(wire.TypeChallenge)
	held(b, wire.TypeAuthProof, "b's AUTH_PROOF")
	b.bind.release(wire.TypeAuthProof)
	waitFor(t, 5*time.Second, "a's session as b's responder", func() bool {
		s := a.Peer("b").keys.current.Load()
		return s != nil && !s.initiator
	})
	// b has a's FINAL and AUTH_PROOF still to come: it sends on the session before.
	b.bind.release(wire.TypeData)
	sendOne(t, b.Peer("a"), 0, []byte("between the two sessions"))
	if b.bind.release(wire.TypeData) == 0 {
		t.Fatal("b sent nothing")
	}
	a.h.waitCount(t, 1, 5*time.Second)
	if d := a.Stats().Drops[DropUnknownIndex]; d != 0 {
		t.Fatalf("a dropped %d frames for an unknown index", d)
	}

	// Everything else goes; the sessions settle on the new seed and carry both ways.
	a.bind.holding.Store(false)
	b.bind.holding.Store(false)
	for _, typ := range []byte{wire.TypeAuthProof, wire.TypeData} {
		a.bind.release(typ)
		b.bind.release(typ)
	}
	waitFor(t, 5*time.Second, "both sessions on the new seed and confirmed", func() bool {
		for _, p := range []*Peer{a.Peer("b"), b.Peer("a")} {
			if s := p.keys.current.Load(); s == nil || !s.confirmed.Load() || s.seed != handshake.SeedID(next) {
				return false
			}
		}
		return true
	})
	sendOne(t, a.Peer("b"), 0, []byte("after, a to b"))
	b.h.waitCount(t, 2, 5*time.Second) // and the "hello" of established
	sendOne(t, b.Peer("a"), 0, []byte("after, b to a"))
	a.h.waitCount(t, 2, 5*time.Second)
}
