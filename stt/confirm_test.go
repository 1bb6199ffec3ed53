package stt

import (
	"testing"
	"time"
)

// TestSessionConfirmedOnlyWhenTheResponderHoldsIt: a responder that does not know the
// initiator refuses its AUTH_PROOF, which leaves the initiator a session (HasSession)
// the responder never made; SessionConfirmed tells the two apart. Once the responder
// knows the initiator, the next handshake's FINAL confirms it.
func TestSessionConfirmedOnlyWhenTheResponderHoldsIt(t *testing.T) {
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	pa, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	if err != nil {
		t.Fatal(err)
	}
	sendOne(t, pa, 0, []byte("to a responder that does not know us"))
	waitFor(t, 10*time.Second, "b refuses a's AUTH_PROOF", func() bool { return b.Stats().Drops[DropUnknownPeer] > 0 })
	waitFor(t, 10*time.Second, "a's session", pa.HasSession)
	if pa.SessionConfirmed() {
		t.Fatal("a's session counts as confirmed, yet b refused it")
	}

	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	pa.Rekey()
	waitFor(t, 10*time.Second, "a's new session confirmed", pa.SessionConfirmed)
	if !b.Peer("a").SessionConfirmed() {
		t.Error("the responder's session is not confirmed")
	}
	// Confirmed means b holds it: a datagram sealed on it arrives.
	sendOne(t, pa, 0, []byte("now known"))
	b.h.waitCount(t, 1, 10*time.Second)
}
