package stt

import (
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// A responder refuses a handshake that authenticates a revoked key: no session, no
// datagram delivered, counted under revoked, and Admit is never asked about it.
func TestRevokedKeyRefusedAsResponder(t *testing.T) {
	seed := randKey(t)
	aKey := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", key: &aKey})
	b, adm := startAdmitting(t, nodeOpts{seed: seed, name: "b"})
	b.SetRevoked([][32]byte{handshake.PublicKey(aKey)})
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	sendOne(t, pa, 0, []byte("x"))
	waitFor(t, 5*time.Second, "revoked drop at the responder", func() bool {
		return b.Stats().Drops[DropRevoked] >= 1
	})
	if b.Peer("a") != nil || b.h.count.Load() != 0 || len(adm.names()) != 0 {
		t.Fatalf("responder let a revoked key in: peer %v, %d delivered, admit asked %v", b.Peer("a"), b.h.count.Load(), adm.names())
	}
	if pa.HasSession() {
		t.Fatal("the revoked initiator has a session")
	}
	// The initiator is told why, in the refusal only the responder could make.
	waitFor(t, 5*time.Second, "the refusal at the revoked initiator", func() bool {
		r, ok := pa.Refusal()
		return ok && r.Name == "revoked"
	})
}

// An initiator refuses to complete its own handshake with a revoked responder: it
// sends no AUTH_PROOF, counts revoked, and does not retry on its own.
func TestRevokedKeyRefusedAsInitiator(t *testing.T) {
	seed := randKey(t)
	dKey := randKey(t)
	c := startNode(t, nodeOpts{seed: seed, name: "c"})
	d := startNode(t, nodeOpts{seed: seed, name: "d", key: &dKey})
	_, _ = d.AddPeer(PeerConfig{Name: "c"})
	c.SetRevoked([][32]byte{handshake.PublicKey(dKey)})
	pd, _ := c.AddPeer(PeerConfig{Name: "d", Endpoint: loopback(d.Node)})
	sendOne(t, pd, 0, []byte("x"))
	waitFor(t, 5*time.Second, "revoked drop at the initiator", func() bool {
		return c.Stats().Drops[DropRevoked] >= 1
	})
	if pd.HasSession() || len(c.bind.ofType(wire.TypeAuthProof)) != 0 || d.h.count.Load() != 0 {
		t.Fatal("initiator completed a handshake with a revoked key")
	}
}

// A revocation closes the sessions already made with the key at once, on the side
// that revokes; the other side's attempts to come back are refused.
func TestRevocationClosesExistingSession(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	b.SetRevoked([][32]byte{handshake.PublicKey(a.key)})
	if b.Peer("a").HasSession() {
		t.Fatal("b still has a session with the revoked key right after SetRevoked")
	}
	// a's traffic makes it handshake again (it learns of the close, or its session
	// dies): every try is refused.
	before := b.h.count.Load()
	waitFor(t, 10*time.Second, "a refused after the revocation", func() bool {
		sendOne(t, a.Peer("b"), 0, []byte("again"))
		return b.Stats().Drops[DropRevoked] >= 1
	})
	if b.Peer("a").HasSession() || b.h.count.Load() != before {
		t.Fatalf("revoked peer came back: session %v, %d datagrams delivered after", b.Peer("a").HasSession(), b.h.count.Load()-before)
	}
}

// A relay that revokes one end of a route pair drops the pair at once: nothing more
// goes through it, and its route count falls to zero. An end that revokes its relay
// leaves the relay path.
func TestRevocationClosesRelayRoutes(t *testing.T) {
	l := newRelayLab(t, labOpts{})
	l.open(t)
	l.exchange(t, "before")
	if l.r.Stats().RelayRoutes == 0 {
		t.Fatal("no relay route before the revocation")
	}
	aKey, _ := l.ra.PublicKey()
	l.r.SetRevoked([][32]byte{aKey})
	if n := l.r.Stats().RelayRoutes; n != 0 {
		t.Fatalf("%d relay routes after revoking an end", n)
	}
	if l.ra.HasSession() {
		t.Fatal("the relay kept its session with the revoked end")
	}

	m := newRelayLab(t, labOpts{})
	m.open(t)
	m.exchange(t, "before")
	rKey, _ := m.ar.PublicKey()
	m.a.SetRevoked([][32]byte{rKey})
	if m.ab.RelayVia() != nil {
		t.Fatal("a still relays through the member it revoked")
	}
}
